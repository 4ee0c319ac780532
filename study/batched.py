"""Several seeds' students trained as one batched model (torch.func: stack_module_state + vmap).

A trial's repeats train the same architecture under the same protocol on
same-sized training sets, so their parameters can be stacked and every step
run as one vmapped forward and backward: one kernel launch per layer instead
of one per seed, which is what makes many seeds cheap on a GPU. The DD
ConvNet uses instance norm, so there are no running statistics to break vmap.
Each seed keeps its own generator and draws its batches, augmentations and
CutMix boxes in exactly the order ``train_student`` does, and element-wise
optimisers (SGD, AdamW) treat stacked parameters exactly like separate ones,
so batched and one-by-one training agree to float tolerance.
"""
from __future__ import annotations

import copy
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from study.data import Dataset
from study.models import model_for
from study.precision import autocast, resolve_precision
from study.recipes import get_recipe
from study.regimes import build_regime
from study.seeding import generator
from study.train import TrainResult, batch_indices, default_device, draw_views, step_flops


def batching_pays(device: str) -> bool:
    """Whether one vmapped model beats training the seeds one by one: on accelerators, where cuDNN runs the
    grouped convolution vmap makes of S convolutions at full speed. On CPU it never paid once the one-by-one
    loop lost its per-step host syncs: 0.84x on 8x8 digits (2 seeds, batch 64) and 0.31x on 28x28
    Fashion-MNIST (3 seeds, batch 128), ConvNet width 32, one thread (benchmarks/batched_seeds.py)."""
    return torch.device(device).type != "cpu"


class StackedModels:
    """S copies of one architecture with stacked parameters, called as one vmapped function."""

    def __init__(self, models: list[torch.nn.Module]):
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.probe = models[0]

    def call(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        """(S, B, ...) views -> (S, B, classes) logits, each seed's views through its own parameters."""
        return vmap(self.call)(self.params, self.buffers, views)

    @torch.no_grad()
    def accuracies(self, images: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 1024) -> list[float]:
        shared = vmap(self.call, in_dims=(0, 0, None))
        correct = torch.zeros(len(next(iter(self.params.values()))), device=device)
        for xs, ys in zip(images.split(batch_size), labels.split(batch_size)):
            logits = shared(self.params, self.buffers, xs.to(device).float().div_(255))
            correct += (logits.argmax(-1) == ys.to(device)).sum(1)
        return (correct / len(labels)).tolist()


def train_students(sets: list[tuple[torch.Tensor, torch.Tensor]], seeds: list[int], data: Dataset, *, steps: int,
                   batch_size: int = 64, model: str = "convnet", model_kwargs: dict | None = None,
                   regime: str = "hl", recipe: str = "adamw-v1", lr: float | None = None, temperature: float = 4.0,
                   t2_scale: bool = True, cutmix_prob: float = 0.0, teacher: torch.nn.Module | None = None,
                   device: str | None = None, precision: str = "auto",
                   eval_points: int = 10) -> list[TrainResult]:
    """Train one student per (training set, seed) together; the sets must have equal sizes. (No channels_last
    or compile here: vmap stacks a fifth dimension, which has no channels_last layout.)"""
    if len({len(y) for _, y in sets}) != 1:
        raise ValueError("batched training needs training sets of equal size")
    device = device or default_device()
    precision = resolve_precision(precision, device)
    start = time.perf_counter()
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(model_for(data, model, **(model_kwargs or {})).to(device))
    stack = StackedModels(models)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    xs = [x.to(device) for x, _ in sets]
    ys = [y.to(device) for _, y in sets]
    rules = [build_regime(regime, teacher=teacher, temperature=temperature, t2_scale=t2_scale, stored_images=x)
             for x in xs]
    gens = [generator(seed) for seed in seeds]
    streams = [batch_indices(len(x), batch_size, g) for x, g in zip(xs, gens)]
    optimizer, schedule = get_recipe(recipe, lr).build(stack.params.values(), steps)
    eval_every = max(1, steps // max(1, eval_points))
    flops = step_flops(stack.probe, augment_probe(xs[0], batch_size), teacher if regime == "sl_kd" else None)

    step_losses = []
    val_curves = [[] for _ in seeds]
    for step in range(steps):
        draws = [draw_views(x, stream, data.augment, g, cutmix_prob) for x, stream, g in zip(xs, streams, gens)]
        with autocast(device, precision):
            logits = stack(torch.stack([views for _, views, _ in draws]))
            losses = torch.stack([rule.loss(logits[s], views, ys[s][index], index, mix)
                                  for s, (rule, (index, views, mix)) in enumerate(zip(rules, draws))])
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        schedule.step()
        step_losses.append(losses.detach())  # read back once at the end: no host sync per step
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            for curve, acc in zip(val_curves, stack.accuracies(data.val_x, data.val_y, device)):
                curve.append((step + 1, acc))

    tests = stack.accuracies(data.test_x, data.test_y, device)
    loss_curves = torch.stack(step_losses).float().cpu().T.tolist()
    wall = (time.perf_counter() - start) / len(seeds)
    return [TrainResult(test_acc=tests[s], val_acc=val_curves[s][-1][1], steps=steps, batch_size=batch_size,
                        samples_seen=steps * batch_size, epochs_equivalent=steps * batch_size / len(data.train_y),
                        flops=flops * steps, wall_seconds=wall, train_size=len(ys[s]), loss_curve=loss_curves[s],
                        val_curve=val_curves[s]) for s in range(len(seeds))]


def augment_probe(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A batch of the right shape for counting FLOPs (the count does not depend on pixel values)."""
    return x[:1].float().expand(batch_size, *x.shape[1:]).contiguous()
