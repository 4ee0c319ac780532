"""A student trained data-parallel on two processes (gloo, real torch.distributed) equals the one-process student."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from study.core.data import load_dataset
from study.core.data_parallel import DataParallel
from study.core.errors import StudyError
from study.core.models import model_for
from study.core.protocol import Protocol
from study.core.train import train_student

PROTOCOL = Protocol(steps=40, batch_size=32, model_kwargs={"width": 16}, regime="sl_kd", cutmix_prob=0.5)
KW = dict(device="cpu", eval_points=2, seed=7)


def setting():
    """The training set and a fixed random-init teacher, rebuilt identically in every process."""
    data = load_dataset("digits")
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))[:60]
    torch.manual_seed(123)
    teacher = model_for(data, "convnet", width=16).eval()
    return data, data.train_x[idx], data.train_y[idx], teacher


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    data, x, y, teacher = setting()
    rows = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, args, _: rows.append(len(args[0])) if m is not teacher and m.training and
        type(m).__name__ == "Classifier" else None)
    result = train_student(x, y, data, PROTOCOL, teacher=teacher, **KW)
    hook.remove()
    try:
        DataParallel(33)
        refused = ""
    except StudyError as err:
        refused = str(err)
    torch.save({"loss": result.loss_curve, "acc": result.test_acc, "rows": rows, "refused": refused,
                "params": [p.detach() for p in result.model.parameters()]}, f"{out}.{rank}")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_the_one_process_student(tmp_path):
    out = str(tmp_path / "ddp")
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    data, x, y, teacher = setting()
    alone = train_student(x, y, data, PROTOCOL, teacher=teacher, **KW)
    for got in ranks:
        # the FLOP count runs the whole batch once through a copy; then each rank runs half of every batch
        assert got["rows"] == [PROTOCOL.batch_size] + [PROTOCOL.batch_size // 2] * PROTOCOL.steps
        assert got["loss"] == pytest.approx(alone.loss_curve, rel=1e-4, abs=1e-5)
        assert got["acc"] == pytest.approx(alone.test_acc, abs=1 / len(data.test_y))
        assert got["refused"] == "The batch size 33 must be divisible by the 2 data-parallel workers of a trial."
    for a, b in zip(*(r["params"] for r in ranks)):
        assert torch.equal(a, b)  # DDP keeps the replicas identical
