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

from study.augment import augment_batch, cutmix
from study.data import Dataset
from study.evaluate import accuracy
from study.models import model_for
from study.data_parallel import DataParallel, is_data_parallel
from study.precision import autocast, device_layout, place_model, resolve_precision
from study.recipes import get_recipe
from study.regimes import build_regime
from study.seeding import generator


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


def draw_views(x: torch.Tensor, batches, spec, g: torch.Generator, cutmix_prob: float):
    """One step's batch: indices, augmented views and the CutMix pairing, all drawn from ``g`` in a fixed order
    (so a seed's students see the same views whether trained alone or batched with other seeds)."""
    index = next(batches).to(x.device)
    views = augment_batch(x[index], spec, g)
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


def train_student(
    images: torch.Tensor,
    labels: torch.Tensor,
    data: Dataset,
    *,
    steps: int,
    batch_size: int = 64,
    model: str = "convnet",
    model_kwargs: dict | None = None,
    regime: str = "hl",
    recipe: str = "adamw-v1",
    lr: float | None = None,
    temperature: float = 4.0,
    t2_scale: bool = True,
    cutmix_prob: float = 0.0,
    teacher: nn.Module | None = None,
    seed: int = 0,
    device: str | None = None,
    precision: str = "auto",
    compile_model: bool = False,
    eval_points: int = 10,
    on_checkpoint: Callable[[int, nn.Module], None] | None = None,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train a fresh student on (images, labels) under a label regime and return its accuracies and cost."""
    if steps < 1:
        raise ValueError("steps must be positive")
    device = device or default_device()
    precision = resolve_precision(precision, device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    plain = place_model(model_for(data, model, **(model_kwargs or {})), device)
    parallel = DataParallel(batch_size) if is_data_parallel() else None
    student = parallel.wrap(plain, device) if parallel else plain
    if compile_model:  # the first steps pay the compilation; budgets count steps, so only wall time changes
        student = torch.compile(student)
    g = generator(seed)
    x = images.to(device)
    y = labels.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    rule = build_regime(regime, teacher=teacher, temperature=temperature, t2_scale=t2_scale, stored_images=x)
    optimizer, schedule = get_recipe(recipe, lr).build(student.parameters(), steps)
    kd_teacher = teacher if regime == "sl_kd" else None
    eval_every = max(1, steps // max(1, eval_points))

    batches = batch_indices(len(x), batch_size, g)
    losses, val_curve, flops_per_step = [], [], 0.0
    student.train()
    for step in range(steps):
        index, views, mix = draw_views(x, batches, data.augment, g, cutmix_prob)
        views = device_layout(views, device)
        if step == 0:
            flops_per_step = step_flops(plain, views, kd_teacher)
        with autocast(device, precision):
            logits = parallel.logits(student, views) if parallel else student(views)
            loss = rule.loss(logits, views, y[index], index, mix)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.detach())  # no per-step host sync; read back once at the end
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val_curve.append((step + 1, accuracy(plain, data.val_x, data.val_y, device)))
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
            on_checkpoint(step + 1, student)

    loss_curve = torch.stack(losses).float().cpu().tolist()
    return TrainResult(
        test_acc=accuracy(plain, data.test_x, data.test_y, device),
        val_acc=val_curve[-1][1],
        steps=steps,
        batch_size=batch_size,
        samples_seen=steps * batch_size,
        epochs_equivalent=steps * batch_size / len(data.train_y),
        flops=flops_per_step * steps,
        wall_seconds=time.perf_counter() - start,
        train_size=len(x),
        loss_curve=loss_curve,
        val_curve=val_curve,
        model=plain,
    )
