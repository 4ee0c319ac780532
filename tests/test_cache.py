"""The content-addressed cache: reuse by key, and corrupted bytes detected (one log line) and recomputed."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from study.core.cache import Cache
from study.core.teacher import TeacherSpec, get_teacher

CODE = ["study.selection.scores"]
KEY = {"kind": "scores", "dataset": "digits", "seed": 3, "params": {"b": 1, "a": [1, 2]}}


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"scores": torch.arange(1000, dtype=torch.float32) * self.calls, "note": "ok"}



def cache_warnings(caplog):
    return [r for r in caplog.records if r.name == "study.core.cache" and r.levelno >= logging.WARNING]


def test_reuse_by_content_key(tmp_path):
    cache, compute = Cache(tmp_path), Counter()
    first = cache.get_or_compute("scores", KEY, compute, code=CODE)
    reordered = {"params": {"a": [1, 2], "b": 1}, "seed": 3, "dataset": "digits", "kind": "scores"}
    again = cache.get_or_compute("scores", reordered, compute, code=CODE)
    assert compute.calls == 1 and torch.equal(first["scores"], again["scores"])
    cache.get_or_compute("scores", {**KEY, "seed": 4}, compute, code=CODE)
    assert compute.calls == 2
    assert len(list((tmp_path / "scores").glob("*.pt"))) == 2
    assert not list((tmp_path / "scores").glob("*.tmp"))  # atomic writes leave no temporaries behind


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar"])
def test_corrupted_entry_is_detected_and_recomputed(tmp_path, caplog, damage):
    cache, compute = Cache(tmp_path), Counter()
    cache.get_or_compute("scores", KEY, compute, code=CODE)
    payload, sidecar = cache.paths("scores", KEY, CODE)
    if damage == "flip":
        data = bytearray(payload.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte deep inside the tensor storage: torch.load would not notice
        payload.write_bytes(bytes(data))
    elif damage == "truncate":
        payload.write_bytes(payload.read_bytes()[:100])
    else:
        sidecar.write_text('{"sha256": ')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="study.core.cache"):
        value = cache.get_or_compute("scores", KEY, compute, code=CODE)
    assert compute.calls == 2, "the damaged entry must be recomputed, not trusted"
    assert torch.equal(value["scores"], torch.arange(1000, dtype=torch.float32) * 2)
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert str(payload) in warnings[0].getMessage()
    # The recomputed entry was stored again and is trusted on the next call, silently.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="study.core.cache"):
        cache.get_or_compute("scores", KEY, compute, code=CODE)
    assert compute.calls == 2 and not cache_warnings(caplog)


def test_missing_sidecar_means_not_cached(tmp_path):
    cache, compute = Cache(tmp_path), Counter()
    cache.get_or_compute("scores", KEY, compute, code=CODE)
    cache.paths("scores", KEY, CODE)[1].unlink()  # as after a kill between the payload and its sidecar
    assert cache.load("scores", KEY, code=CODE) is None
    cache.get_or_compute("scores", KEY, compute, code=CODE)
    assert compute.calls == 2


def test_corrupted_teacher_is_retrained_identically(tmp_path, caplog, digits):
    spec = TeacherSpec(model_kwargs={"width": 8}, epochs=2)
    cache = Cache(tmp_path)
    first = get_teacher(digits, spec, cache, device="cpu")
    (entry,) = (tmp_path / "teachers").glob("*.pt")
    data = bytearray(entry.read_bytes())
    data[-200] ^= 0x01
    entry.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="study.core.cache"):
        second = get_teacher(digits, spec, cache, device="cpu")
    assert len(cache_warnings(caplog)) == 1
    assert second.test_acc == first.test_acc
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def blocked_on(path: Path) -> int:
    """How many processes wait for the flock on ``path`` now: /proc/locks lists each blocked waiter as a
    '->' line naming the file's inode."""
    inode = f":{path.stat().st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


def shared_entry(root: str, log: str, waiters: int) -> float:
    """Get one shared entry; whoever computes it first waits until ``waiters`` other processes are blocked on
    its lock, so the test knows the lock was contended, and notes what it saw in ``log``."""
    cache = Cache(root)

    def compute():
        lock = cache.paths("shared", {"k": 1}, CODE)[0].with_suffix(".lock")
        while blocked_on(lock) < waiters:
            time.sleep(0.01)  # polling an event; how long it takes decides nothing
        with open(log, "a") as f:
            f.write(f"computed while {blocked_on(lock)} waited\n")
        return torch.tensor([7.0])

    return float(cache.get_or_compute("shared", {"k": 1}, compute, code=CODE)[0])


def entry_into(queue, *args) -> None:
    queue.put(shared_entry(*args))


def test_processes_needing_one_entry_compute_it_once(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    log, results = tmp_path / "log.txt", ctx.Queue()
    procs = [ctx.Process(target=entry_into, args=(results, str(tmp_path / "cache"), str(log), 2)) for _ in range(3)]
    for p in procs:
        p.start()
    values = [results.get() for _ in procs]
    for p in procs:
        p.join()
    assert values == [7.0, 7.0, 7.0]
    assert log.read_text().splitlines() == ["computed while 2 waited"], "computed once, with the lock contended"
