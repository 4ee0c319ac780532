"""One trial, start to finish, in a plain Python process.

Both executors (inline in a Tune trial, or a Ray Train worker) call
:func:`run_trial`; it loads the data, gets the teacher when the regime or the
selector needs one, selects a subset per repeat, trains a student per repeat
under the budget and returns plain numbers.
"""
from __future__ import annotations

import hashlib
import math
import statistics
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from study.core.cache import Cache
from study.runs.config import TrialConfig
from study.core.data import Dataset, load_dataset
from study.core.regimes import REGIMES
from study.selection import Selection, SelectionContext, build_selector
from study.core.teacher import get_teacher
from study.core.batched import batching_pays, train_students
from study.core.data_parallel import is_data_parallel
from study.core.precision import resolve_precision
from study.core.train import default_device, train_student


@lru_cache(maxsize=4)
def cached_dataset(name: str, data_root: str | None) -> Dataset:
    return load_dataset(name, data_root)


def tensor_digest(*tensors) -> str:
    """16 hex digits over the bytes of ``tensors``: the same data gives the same digest wherever it was loaded."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=4)
def dataset_profile(name: str, data_root: str | None) -> tuple[str, dict]:
    """The training split's digest and size, once per process (hashing Fashion-MNIST takes a tenth of a second)."""
    data = cached_dataset(name, data_root)
    images = data.train_x
    digest = tensor_digest(images, data.train_y) if isinstance(images, torch.Tensor) else \
        hashlib.sha256((images.digest() + tensor_digest(data.train_y)).encode()).hexdigest()[:16]
    return digest, {"train_images": len(data.train_y), "classes": data.num_classes}


# What a scoring-run selector's provenance says about its run and its selection (study.selection.cad's
# compute_cad and difficulty_record): the trial's metrics ``selection.<key>``, so MLflow and results.csv hold the
# ratio, the checkpoints and windows CAD read, the scoring run's compute (training and EL2N images apart) and the
# selection's mean percentile on the teacher's AUM axis.
SELECTION_METRICS = ("ratio", "student_images", "scoring_epochs", "scoring_steps", "K", "J", "W",
                     "scoring_train_images", "scoring_el2n_images", "mean_difficulty")
SELECTION_PREFIX = "selection."


@dataclass
class TrialOutcome:
    config: TrialConfig
    per_seed: list[dict]
    selections: list[Selection] = field(repr=False, default_factory=list)
    teacher_test_acc: float | None = None
    wall_seconds: float = 0.0
    family: str = "coreset"
    image_shape: tuple[int, ...] = ()  # as decoded: an ImageFolder tree's follows HARDTRUTHS_IMAGEFOLDER_SIZE

    def resolved(self) -> dict:
        """What the config leaves to the machine and the environment, as this trial resolved it."""
        return {"precision": self.per_seed[0]["precision"], "image_shape": "x".join(map(str, self.image_shape))}

    @property
    def accuracies(self) -> list[float]:
        return [s["test_acc"] for s in self.per_seed]

    def metrics(self) -> dict:
        accs = self.accuracies
        first = self.per_seed[0]
        out = {
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
            "val_acc_mean": statistics.fmean(s["val_acc"] for s in self.per_seed),
            "wall_seconds": self.wall_seconds,
            "train_seconds": sum(s["train_seconds"] for s in self.per_seed),
            "select_seconds": sum(s["select_seconds"] for s in self.per_seed),
            "flops": first["flops"],
            "samples_seen": first["samples_seen"],
            "epochs_equivalent": first["epochs_equivalent"],
            "train_size": first["train_size"],
        }
        out.update({f"test_acc_seed{s['repeat']}": s["test_acc"] for s in self.per_seed})
        out.update({f"val_acc_seed{s['repeat']}": s["val_acc"] for s in self.per_seed})
        if self.teacher_test_acc is not None:
            out["teacher_test_acc"] = self.teacher_test_acc
        return {**out, **self.selection_metrics()}

    def selection_metrics(self) -> dict:
        """:data:`SELECTION_METRICS` found in the selections' provenance, as their mean over the repeats. Every
        repeat reads the same cached scoring run, so its figures are that one run's cost (whether this trial
        trained it or found it cached); CA2D's mean difficulty varies with each repeat's crops."""
        out = {}
        for key in SELECTION_METRICS:
            values = [s.provenance[key] for s in self.selections if s.provenance.get(key) is not None]
            if values:
                out[SELECTION_PREFIX + key] = statistics.fmean(values)
        return out


def selection_key(cfg: TrialConfig, selector, repeat: int, device: str | None = None) -> dict:
    """What a selection depends on: the data and the selector's resolved parameters always (an external set's
    include its content hash), the teacher and budget only if it reads them (a budget-aware selector's proxy
    trains under the regime, and so reads the teacher under soft labels), and then also what precision "auto"
    resolves to on ``device``, where the teacher and the proxies train (None: any device, to compare cells)."""
    key = {"dataset": cfg.dataset, "selector": cfg.selector, "params": selector.params, "ipc": cfg.ipc,
           "seed": cfg.selection_seed(repeat)}
    if selector.needs_teacher or selector.budget_aware:
        key["teacher"] = cfg.teacher.to_dict()
        if device is not None:
            key["auto_precision"] = resolve_precision("auto", device)
    if selector.budget_aware:
        key["budget"] = cfg.protocol.to_dict()
    return key


def get_selection(ctx: SelectionContext, selector, cfg: TrialConfig, repeat: int) -> Selection:
    if cfg.is_full_data:
        return selector.select(ctx, cfg.ipc, cfg.selection_seed(repeat))
    return ctx.cache.get_or_compute("selections", selection_key(cfg, selector, repeat, ctx.device),
                                    lambda: selector.select(ctx, cfg.ipc, cfg.selection_seed(repeat)),
                                    code=[type(selector).__module__])


def context_for(cfg: TrialConfig, cache_dir, device: str) -> SelectionContext:
    data = cached_dataset(cfg.dataset, cfg.data_root)
    cache = Cache(cache_dir)
    return SelectionContext(data, cache, device, cfg.protocol, lambda: get_teacher(data, cfg.teacher, cache, device))


def prepare_selection(cfg: TrialConfig, repeat: int, cache_dir=None, device: str | None = None) -> None:
    """Make and cache one repeat's selection of a cell ahead of training (a study's preparation step)."""
    ctx = context_for(cfg, cache_dir, device or default_device())
    get_selection(ctx, build_selector(cfg.selector, **cfg.selector_params), cfg, repeat)


def run_trial(cfg: TrialConfig, cache_dir: str | Path | None = None, device: str | None = None,
              batched: bool = True, compile_model: bool = False,
              progress: Callable[[int, dict], None] | None = None) -> TrialOutcome:
    """Select and train every repeat of ``cfg``; repeats with equal-sized sets train as one vmapped model
    when ``batched`` and it pays on the device (same accuracies to float tolerance, see study.core.batched),
    otherwise one by one: with torch.compile when ``compile_model``, data-parallel over the ranks when a
    process group is set up. ``progress(step, metrics)`` hears each repeat's validation accuracy and loss at
    every evaluation point (:func:`seed_metrics`), while the students train."""
    start = time.perf_counter()
    device = device or default_device()
    ctx = context_for(cfg, cache_dir, device)
    selector = build_selector(cfg.selector, **cfg.selector_params)
    teacher = ctx.teacher.model if REGIMES.get(cfg.protocol.regime).needs_teacher else None

    selections, select_seconds = [], []
    for repeat in range(cfg.seeds):
        t0 = time.perf_counter()
        selections.append(get_selection(ctx, selector, cfg, repeat))
        select_seconds.append(time.perf_counter() - t0)
    seeds = [cfg.train_seed(r) for r in range(cfg.seeds)]
    alike = len({(len(s), s.views) for s in selections}) == 1
    vmappable = not (compile_model or is_data_parallel()) and alike
    if batched and vmappable and cfg.seeds > 1 and batching_pays(device):
        results = train_students([(s.images, s.labels) for s in selections], seeds, ctx.data, cfg.protocol,
                                 teacher=teacher, device=device, views=selections[0].views,
                                 on_eval=seed_metrics(progress, range(cfg.seeds)))
    else:
        results = [train_student(s.images, s.labels, ctx.data, cfg.protocol, teacher=teacher, seed=seed,
                                 device=device, compile_model=compile_model, views=s.views,
                                 on_eval=seed_metrics(progress, [repeat]))
                   for repeat, (s, seed) in enumerate(zip(selections, seeds))]
    per_seed = [{"repeat": r, "selection_seed": cfg.selection_seed(r), "train_seed": seeds[r],
                 "select_seconds": select_seconds[r], "train_seconds": res.wall_seconds, **res.to_dict()}
                for r, res in enumerate(results)]
    teacher_acc = ctx.teacher.test_acc if "teacher" in ctx.__dict__ else None
    return TrialOutcome(cfg, per_seed, selections, teacher_acc, time.perf_counter() - start,
                        selector.family, tuple(ctx.data.image_shape))


def seed_metrics(progress: Callable[[int, dict], None] | None, repeats) -> Callable | None:
    """The training loop's ``on_eval`` for the students of ``repeats``, as ``progress(step, {val_acc_curve_seed<r>,
    train_loss_curve_seed<r>})``: one curve per repeat, as repeats trained one by one each restart at step 1."""
    if progress is None:
        return None
    repeats = list(repeats)

    def on_eval(step: int, accs: list[float], losses: list[float]) -> None:
        metrics = {f"val_acc_curve_seed{r}": a for r, a in zip(repeats, accs)}
        progress(step, {**metrics, **{f"train_loss_curve_seed{r}": loss for r, loss in zip(repeats, losses)}})
    return on_eval
