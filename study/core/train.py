"""Budgeted student training: exactly S optimiser steps at batch B, whatever the training-set size.

The budget is the number of steps, not epochs on the subset: an IPC-1 subset
and the full data get the same compute. Batches are drawn from a stream of
fresh permutations of the training set (a reshuffle on every pass), so with a
training set smaller than B a batch holds several augmented views of the same
image. The training set lives on the device as uint8 and is augmented there.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from study.core.augment import augment_batch, cutmix
from study.core.data import Augment, Dataset
from study.core.dsa import DSA
from study.core.evaluate import accuracy
from study.core.models import model_for
from study.core.data_parallel import DataParallel, is_data_parallel
from study.core.precision import autocast, device_layout, place_model, resolve_precision
from study.core.protocol import Protocol
from study.core.recipes import get_recipe
from study.core.regimes import build_regime
from study.core.seeding import generator


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainResult:
    test_acc: float
    val_acc: float
    steps: int
    batch_size: int
    samples_seen: int
    epochs_equivalent: float
    flops: float
    wall_seconds: float
    train_size: int
    precision: str = "fp32"  # as resolved on the device that trained (Protocol.precision may say "auto")
    loss_curve: list[float] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}


def batch_indices(n: int, batch_size: int, g: torch.Generator):
    """Endless batches of exactly ``batch_size`` indices from back-to-back permutations of range(n)."""
    pending = torch.empty(0, dtype=torch.long)
    while True:
        while len(pending) < batch_size:
            pending = torch.cat([pending, torch.randperm(n, generator=g)])
        yield pending[:batch_size]
        pending = pending[batch_size:]


def training_views(protocol: Protocol, data: Dataset, own: Augment | None) -> Augment | DSA:
    """What a student's batches go through: the training set's own views, else DSA or the dataset's."""
    if own is not None:
        return own
    return DSA(data.mean, data.std) if protocol.augment == "dsa" else data.augment


def draw_views(x: torch.Tensor, batches, spec: Augment | DSA, g: torch.Generator, cutmix_prob: float):
    """One step's batch: indices, augmented views and the CutMix pairing, all drawn from ``g`` in a fixed order
    (so a seed's students see the same views whether trained alone or batched with other seeds)."""
    index = next(batches).to(x.device)
    views = spec.views(x[index], g) if isinstance(spec, DSA) else augment_batch(x[index], spec, g)
    mix = None
    if cutmix_prob > 0 and float(torch.rand(1, generator=g)) < cutmix_prob:
        views, mix = cutmix(views, g)
    return index, views, mix


def step_flops(model: nn.Module, views: torch.Tensor, teacher: nn.Module | None) -> float:
    """FLOPs of one training step: student forward + backward, plus the teacher's forward when it runs per step.
    Counted on a copy, so the student's gradients and normalisation statistics are untouched."""
    model = copy.deepcopy(model)
    with FlopCounterMode(display=False) as counter:
        model(views).sum().backward()
        if teacher is not None:
            with torch.no_grad():
                teacher(views)
    return float(counter.get_total_flops())


class OneStudent:
    """One model seen by :func:`fit` as a batch of one: data-parallel over the ranks when a process group is
    set up, optionally compiled, in the device's fastest memory layout."""

    def __init__(self, model: nn.Module, device: str, batch_size: int, compile_model: bool = False):
        self.model, self.probe, self.device = model, model, device
        self.parallel = DataParallel(batch_size) if is_data_parallel() else None
        net = self.parallel.wrap(model, device) if self.parallel else model
        # the first steps pay the compilation; budgets count steps, so only wall time changes
        self.net = torch.compile(net) if compile_model else net

    lead_dims = 0

    def named_parameters(self):
        return self.net.named_parameters()

    def train(self) -> None:
        self.net.train()

    def prepare(self, views: torch.Tensor) -> torch.Tensor:
        return device_layout(views, self.device)

    def __call__(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.parallel.logits(self.net, views[0]) if self.parallel else self.net(views[0])]

    def accuracies(self, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
        return [accuracy(self.model, images, labels, self.device)]

    def models(self) -> list[nn.Module | None]:
        return [self.model]


def fit(students, sets: list[tuple[torch.Tensor, torch.Tensor]], gens: list[torch.Generator], data: Dataset,
        protocol: Protocol, *, teacher: nn.Module | None, device: str, start: float, eval_points: int = 10,
        stop_at: int | None = None, after_step: Callable[[int], None] | None = None,
        views: Augment | None = None, on_eval: Callable[[int, list[float], list[float]], None] | None = None
        ) -> list[TrainResult]:
    """The training loop, for one student (:class:`OneStudent`) or several trained as one vmapped model
    (``study.core.batched.StackedStudents``): each seed draws its own batches, views and CutMix boxes from its own
    generator, so a seed's student is the same whichever way it is trained. The schedule spans
    ``protocol.steps``; ``stop_at`` ends the run earlier, mid-schedule (an early-stopped proxy). ``views`` are
    the training sets' own views (a stitched set's, see ``Selection.views``), in place of the dataset's for every
    regime; the KD teacher labels whichever view the student sees. ``on_eval(step, val_accs, losses)`` hears each
    student's validation accuracy and last loss at every evaluation point, while training goes on (a study
    streams them to its live MLflow runs); the evaluation already waits for the device, so this costs no sync."""
    if protocol.steps < 1:
        raise ValueError("steps must be positive")
    precision = resolve_precision(protocol.precision, device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    kd_teacher = teacher if protocol.regime == "sl_kd" else None
    xs = [x.to(device) for x, _ in sets]
    ys = [y.to(device) for _, y in sets]
    rules = [build_regime(protocol, teacher=teacher, stored_images=x) for x in xs]
    streams = [batch_indices(len(x), protocol.batch_size, g) for x, g in zip(xs, gens)]
    optimizer, schedule = get_recipe(protocol.recipe, protocol.lr).build(students.named_parameters(), protocol.steps,
                                                                        lead_dims=students.lead_dims)
    run = stop_at or protocol.steps
    eval_every = max(1, protocol.steps // max(1, eval_points))
    spec = training_views(protocol, data, views)
    flops = step_flops(students.probe, flop_probe(xs[0], protocol.batch_size), kd_teacher)

    step_losses, val_curves = [], [[] for _ in gens]
    students.train()
    for step in range(run):
        draws = [draw_views(x, stream, spec, g, protocol.cutmix_prob) for x, stream, g in zip(xs, streams, gens)]
        views = [students.prepare(v) for _, v, _ in draws]
        with autocast(device, precision):
            logits = students(views)
            losses = torch.stack([rule.loss(out, v, y[index], index, mix) for rule, out, v, y, (index, _, mix)
                                  in zip(rules, logits, views, ys, draws)])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        schedule.step()
        step_losses.append(losses.detach())  # read back once at the end: no host sync per step
        if (step + 1) % eval_every == 0 or step + 1 == run:
            accs = students.accuracies(data.val_x, data.val_y)
            for curve, acc in zip(val_curves, accs):
                curve.append((step + 1, acc))
            if on_eval is not None:
                on_eval(step + 1, accs, losses.detach().float().cpu().tolist())
        if after_step is not None:
            after_step(step + 1)

    tests = students.accuracies(data.test_x, data.test_y)
    loss_curves = torch.stack(step_losses).float().cpu().T.tolist()
    wall = (time.perf_counter() - start) / len(gens)
    return [TrainResult(test_acc=tests[s], val_acc=val_curves[s][-1][1], steps=run, batch_size=protocol.batch_size,
                        samples_seen=run * protocol.batch_size,
                        epochs_equivalent=run * protocol.batch_size / len(data.train_y), flops=flops * run,
                        wall_seconds=wall, train_size=len(ys[s]), precision=precision, loss_curve=loss_curves[s],
                        val_curve=val_curves[s], model=model) for s, model in enumerate(students.models())]


def flop_probe(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A batch of the right shape for counting FLOPs (the count does not depend on pixel values)."""
    return x[:1].float().expand(batch_size, *x.shape[1:]).contiguous()


def train_student(images: torch.Tensor, labels: torch.Tensor, data: Dataset, protocol: Protocol, *,
                  teacher: nn.Module | None = None, seed: int = 0, device: str | None = None,
                  compile_model: bool = False, eval_points: int = 10, stop_at: int | None = None,
                  on_checkpoint: Callable[[int, nn.Module], None] | None = None,
                  checkpoint_every: int = 0, views: Augment | None = None,
                  on_eval: Callable[[int, list[float], list[float]], None] | None = None) -> TrainResult:
    """Train a fresh student on (images, labels) under ``protocol`` and return its accuracies and cost;
    ``on_checkpoint(step, model)`` runs every ``checkpoint_every`` steps; ``views`` replace the dataset's;
    ``on_eval`` as in :func:`fit`."""
    device = device or default_device()
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = place_model(model_for(data, protocol.model, **protocol.model_kwargs), device)

    def after_step(step: int) -> None:
        if on_checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
            on_checkpoint(step, model)

    student = OneStudent(model, device, protocol.batch_size, compile_model)
    return fit(student, [(images, labels)], [generator(seed)], data, protocol, teacher=teacher, device=device,
               start=start, eval_points=eval_points, stop_at=stop_at, after_step=after_step, views=views,
               on_eval=on_eval)[0]
