"""What a trial left: its record (the plain data MLflow and results.csv are written from) and its artifacts.

The trainable builds the record from the trial's outcome
(:class:`study.runs.trial.TrialOutcome`) and writes it, with each repeat's
selection and a picture grid, into one folder that becomes the trial's Tune
checkpoint, so the driver can log it wherever the trial ran and a later run can
replay it from there (study.runs.checkpoints). Ray copies that folder into the
study's storage file by file, in no set order, so a copy cut off by a kill can
hold a record without all of its artifacts, or a truncated record. The record
therefore lists the other files of its folder with their sizes, and
:func:`read_complete` trusts a folder only when every one of them is there in
full. The record's config is flat (:func:`flatten`): one MLflow param and one
results.csv column per setting.
"""
from __future__ import annotations

import json
import platform
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import save_image

from study.core.cache import atomic_write_text
from study.runs.config import TrialConfig
from study.runs.provenance import code_version
from study.runs.trial import SELECTION_PREFIX, TrialOutcome, dataset_profile, tensor_digest
from study.selection.artifacts import class_grid

RECORD_FILE = "record.json"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'teacher': {'epochs': 5}} -> {'teacher.epochs': 5}: every config field becomes one MLflow param."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def write_record(folder: Path, record: dict) -> Path:
    """Write ``record`` last into ``folder``, listing the files already there (name: bytes)."""
    files = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())
             if p.is_file() and p.name != RECORD_FILE}
    atomic_write_text(Path(folder) / RECORD_FILE, json.dumps({**record, "files": files}, default=str))
    return Path(folder)


def read_record(folder: Path) -> dict:
    return json.loads((Path(folder) / RECORD_FILE).read_text())


def read_complete(folder: Path) -> dict | None:
    """The record of ``folder``, or None when the record or any file it lists is missing or cut short."""
    try:
        record = read_record(folder)
    except (OSError, ValueError):
        return None
    for name, size in record.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return record


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


def write_trial_folder(outcome: TrialOutcome, record: dict, folder: Path, data=None) -> Path:
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
