"""A finished (or failed) trial as plain data: the record MLflow and the ledger are written from.

The trainable writes the record and the selection artifacts into one folder
(a Ray checkpoint), so the driver can log them wherever the trial ran, and a
later run can replay them from there (study.runs.journal).
"""
from __future__ import annotations

import platform
import time
import traceback
from pathlib import Path

import torch
from torchvision.utils import save_image

from study.runs.config import TrialConfig
from study.runs.provenance import code_version
from study.runs.records import write_record
from study.selection.artifacts import class_grid
from study.runs.trial import SELECTION_PREFIX, TrialOutcome, dataset_profile, tensor_digest


def mean_curve(per_seed: list[dict], key: str) -> list[tuple[int, float]]:
    curves = [s[key] for s in per_seed]
    return [(step, sum(c[i][1] for c in curves) / len(curves)) for i, (step, _) in enumerate(curves[0])]


def loss_points(per_seed: list[dict], points: int = 50) -> list[tuple[int, float]]:
    """The seed-averaged training loss at about ``points`` evenly spaced steps."""
    n = len(per_seed[0]["loss_curve"])
    stride = max(1, n // points)
    return [(i + 1, sum(s["loss_curve"][i] for s in per_seed) / len(per_seed)) for i in range(stride - 1, n, stride)]


TRACKED_PROVENANCE = ("content_hash",)


def tracked_params(outcome: TrialOutcome) -> dict:
    """Selector parameters learnt while selecting (an external set's content hash, from its provenance)."""
    return {k: s.provenance[k] for s in outcome.selections for k in TRACKED_PROVENANCE if k in s.provenance}


def training_inputs(outcome: TrialOutcome) -> list[dict]:
    """What the trial trained on, for MLflow's Datasets column: the data set it drew from, and the selection
    (every seed's images or indices, with labels) it trained its students on."""
    cfg = outcome.config
    parts = [t for s in outcome.selections for t in ((s.images if s.indices is None else s.indices), s.labels)]
    digest, profile = dataset_profile(cfg.dataset, cfg.data_root)
    source = {"name": cfg.dataset, "source": cfg.dataset, "digest": digest, "context": "source", "profile": profile}
    ipc = "full" if cfg.is_full_data else f"ipc={cfg.ipc}"
    selection = {"name": f"{cfg.dataset} {cfg.selector} {ipc}", "source": cfg.dataset, "digest": tensor_digest(*parts),
                 "context": "training",
                 "profile": {"selector": cfg.selector, "ipc": cfg.ipc, "seeds": cfg.seeds,
                             "images_per_seed": outcome.per_seed[0]["train_size"]}}
    return [source, selection]


def difficulty_axis(outcome: TrialOutcome) -> dict:
    """The axis the metric ``selection.mean_difficulty`` is measured on, as a tag, where the selections have one."""
    axes = {s.provenance.get("difficulty_axis") for s in outcome.selections} - {None}
    return {SELECTION_PREFIX + "difficulty_axis": ",".join(sorted(axes))} if axes else {}


def success_record(outcome: TrialOutcome, tags: dict) -> dict:
    """The recorded config adds :func:`tracked_params` to ``selector_params`` (so they become MLflow params);
    ``config_hash`` stays the hash of the config as asked. Rerun as recorded, the external selector refuses a
    file whose content hash differs."""
    cfg = outcome.config
    extra = tracked_params(outcome)
    config = cfg.to_dict()
    if extra:
        config = {**config, "selector_params": {**extra, **config["selector_params"]}}
    end = time.time()
    return {
        "config": config,
        "config_hash": cfg.hash,
        "label": cfg.label(),
        "status": "FINISHED",
        "start_ms": int((end - outcome.wall_seconds) * 1000),  # the run's true span in MLflow, however late it
        "end_ms": int(end * 1000),                             # is logged (the driver logs after the trial)
        "metrics": outcome.metrics(),
        "curves": {"val_acc": mean_curve(outcome.per_seed, "val_curve"), "train_loss": loss_points(outcome.per_seed)},
        "inputs": training_inputs(outcome),
        "tags": {"host": platform.node(), "family": outcome.family, "code_version": code_version(),
                 **outcome.resolved(), **difficulty_axis(outcome), **tags},
    }


def failure_record(cfg: TrialConfig, error: BaseException | str, tags: dict | None = None) -> dict:
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
    return {"config": cfg.to_dict(), "config_hash": cfg.hash, "label": cfg.label(), "status": "FAILED",
            "metrics": {}, "curves": {}, "error": text.strip(),
            "tags": {"code_version": code_version(), **(tags or {})}}


def write_outcome(outcome: TrialOutcome, record: dict, folder: Path, data=None) -> Path:
    """The record plus each seed's selected indices (or synthetic images) and a picture grid."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, selection in zip(outcome.per_seed, outcome.selections):
        payload = {"labels": selection.labels, "provenance": selection.provenance}
        if selection.indices is not None:
            payload["indices"] = selection.indices
        else:
            payload["images"] = selection.images
        torch.save(payload, folder / f"selection_seed{s['repeat']}.pt")
    if data is not None and outcome.selections:
        grid = class_grid(outcome.selections[0], data.num_classes, per_class=8)
        save_image(grid, folder / "selection_seed0.png", nrow=8, padding=1)
    return write_record(folder, record)
