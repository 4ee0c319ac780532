"""Several seeds' students trained as one batched model (torch.func: stack_module_state + vmap).

A trial's repeats train the same architecture under the same protocol on
same-sized training sets, so their parameters can be stacked and every step
run as one vmapped forward and backward: one kernel launch per layer instead
of one per seed, which is what makes many seeds cheap on a GPU. BatchNorm
(``convnet_bn``) works too: its running statistics are stacked buffers, which
each seed's training-mode forward updates in place under vmap, and
evaluation switches the shared module to eval mode so they are read, not
updated (tests/test_batched.py checks both against one-by-one training).
Each seed keeps its own generator and draws its batches, augmentations and
CutMix boxes in exactly the order ``train_student`` does, and element-wise
optimisers (SGD, AdamW) treat stacked parameters exactly like separate ones,
so batched and one-by-one training agree to float tolerance.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state, vmap

from study.core.data import Augment, Dataset
from study.core.models import model_for
from study.core.protocol import Protocol
from study.core.seeding import generator
from study.core.train import TrainResult, default_device, fit


def batching_pays(device: str) -> bool:
    """Whether one vmapped model beats training the seeds one by one: on accelerators, where cuDNN runs the
    grouped convolution vmap makes of S convolutions at full speed. On CPU it never paid once the one-by-one
    loop lost its per-step host syncs: 0.84x on 8x8 digits (2 seeds, batch 64) and 0.31x on 28x28
    Fashion-MNIST (3 seeds, batch 128), ConvNet width 32, one thread (benchmarks/batched_seeds.py)."""
    return torch.device(device).type != "cpu"


class StackedStudents:
    """S copies of one architecture with stacked parameters, run by :func:`study.core.train.fit` as one vmapped
    function. (No channels_last or compile here: vmap stacks a fifth dimension, which has no channels_last
    layout.)"""

    def __init__(self, models: list[torch.nn.Module], device: str):
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.probe, self.device, self.size = models[0], device, len(models)

    lead_dims = 1  # a stacked parameter's first dimension is the seed

    def named_parameters(self):
        return self.params.items()

    def train(self) -> None:
        """The stacked copies are built in training mode; only :meth:`accuracies` leaves it, and returns."""

    def prepare(self, views: torch.Tensor) -> torch.Tensor:
        return views

    def call(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, views: list[torch.Tensor]) -> torch.Tensor:
        """S views of (B, ...) -> (S, B, classes) logits, each seed's views through its own parameters."""
        return vmap(self.call)(self.params, self.buffers, torch.stack(views))

    @torch.no_grad()
    def accuracies(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> list[float]:
        shared = vmap(self.call, in_dims=(0, 0, None))
        correct = torch.zeros(self.size, device=self.device)
        self.base.eval()  # BatchNorm reads its running statistics, as a lone model's evaluation does
        for xs, ys in zip(images.split(batch_size), labels.split(batch_size)):
            logits = shared(self.params, self.buffers, xs.to(self.device).float().div_(255))
            correct += (logits.argmax(-1) == ys.to(self.device)).sum(1)
        self.base.train()
        return (correct / len(labels)).tolist()

    def models(self) -> list[None]:
        return [None] * self.size


def train_students(sets: list[tuple[torch.Tensor, torch.Tensor]], seeds: list[int], data: Dataset,
                   protocol: Protocol, *, teacher: torch.nn.Module | None = None, device: str | None = None,
                   eval_points: int = 10, views: Augment | None = None,
                   on_eval: Callable[[int, list[float], list[float]], None] | None = None) -> list[TrainResult]:
    """Train one student per (training set, seed) together; the sets must have equal sizes and share ``views``;
    ``on_eval`` as in ``study.core.train.fit``."""
    if len({len(y) for _, y in sets}) != 1:
        raise ValueError("batched training needs training sets of equal size")
    device = device or default_device()
    start = time.perf_counter()
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(model_for(data, protocol.model, **protocol.model_kwargs).to(device))
    return fit(StackedStudents(models, device), sets, [generator(seed) for seed in seeds], data, protocol,
               teacher=teacher, device=device, start=start, eval_points=eval_points, views=views, on_eval=on_eval)
