"""A single trial from the command line: one number, or one cell of a study reproduced.

    python -m study.run --dataset digits --selector random --ipc 10 --regime hl --steps 300
    python -m study.run --preset fashion-mnist --selector herding --ipc 10 --set model_kwargs.width=64
    python -m study.run --config config.json          # a trial's resolved config: reruns that cell

The protocol comes from a preset, as in a study: the one --preset names, else
the dataset's own (a dataset without one needs --preset). --config FILE takes
a trial's resolved config instead: the config.json artifact of its MLflow run,
the record.json in its Tune checkpoint, or this command's --json output; the
other flags and --set then change single settings of it. --set takes the same
key=value settings as python -m study.scaling.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from study.cli import friendly_errors, parser
from study.analysis.summary import mean_std
from study.core.errors import StudyError
from study.runs.config import TrialConfig
from study.runs.validate import validate_trial

DEFAULT_CELL = {"dataset": "digits", "selector": "random", "ipc": 10, "regime": "hl", "seeds": 1}
# flag -> the trial setting it sets; each flag's default is "as the preset (or --config) has it"
CELL_FLAGS = {"selector": "selector", "ipc": "ipc", "regime": "regime", "steps": "steps", "seeds": "seeds",
              "model": "model", "batch_size": "batch_size", "recipe": "recipe"}


def parse(argv=None) -> argparse.Namespace:
    p = parser("python -m study.run", __doc__)
    p.add_argument("--config", default=None, metavar="FILE",
                   help="a trial's resolved config (JSON: config.json, record.json or --json output) to run again "
                        "(default: none, the cell is built from the preset and the flags)")
    p.add_argument("--preset", default=None, help="dataset protocol: model, batch, recipe, teacher (default: the "
                                                  "dataset's own preset)")
    p.add_argument("--dataset", default=None, help=f"dataset (default: the preset's, else {DEFAULT_CELL['dataset']})")
    p.add_argument("--data-root", default=None, help="folder holding torchvision / IDX datasets (default: the "
                                                     "dataset's usual places)")
    p.add_argument("--selector", default=None, help=f"selector (default: {DEFAULT_CELL['selector']}, or --config's)")
    p.add_argument("--ipc", type=int, default=None, help=f"images per class (default: {DEFAULT_CELL['ipc']}, "
                                                         f"or --config's)")
    p.add_argument("--regime", default=None, help=f"label regime: hl, sl, sl_kd (default: {DEFAULT_CELL['regime']}, "
                                                  f"or --config's)")
    p.add_argument("--steps", type=int, default=None, help="student steps (default: the preset's first budget, "
                                                           "or --config's)")
    p.add_argument("--batch-size", type=int, default=None, help="student batch size (default: the preset's)")
    p.add_argument("--model", default=None, help="student model: convnet, resnet18, timm:<name> (default: the "
                                                 "preset's)")
    p.add_argument("--recipe", default=None, help="optimiser recipe: sgd-v1, adamw-v1 (default: the preset's)")
    p.add_argument("--seeds", type=int, default=None, help=f"repeats (default: {DEFAULT_CELL['seeds']}, or "
                                                           f"--config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol setting as in study.scaling, e.g. --set model_kwargs.width=64 or "
                        "--set selector_params.dm.iterations=200")
    p.add_argument("--cache-dir", default=None, help="preparation cache (default: ~/.cache/hardtruths)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    p.add_argument("--json", action="store_true", help="print the full outcome as JSON")
    return p.parse_args(argv)


def read_config(path: str) -> dict:
    """The flat config in FILE: the file itself, or its ``config`` entry (a record, --json output)."""
    try:
        found = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as err:
        raise StudyError(f"--config {path} is not a readable JSON file ({err}).") from None
    found = found.get("config", found) if isinstance(found, dict) else found
    if not isinstance(found, dict):
        raise StudyError(f"--config {path} holds no trial config (a JSON object of settings).")
    return found


def base_cell(a: argparse.Namespace) -> tuple[dict, dict]:
    """The cell before the flags and --set, and the preset it comes from: --config's (no preset), or the
    preset's."""
    from search_spaces import PRESETS
    from study.runs.spec import preset_for, preset_protocol

    if a.config:
        if a.preset or a.dataset:
            raise StudyError("--config already fixes the dataset and its protocol; drop --preset / --dataset "
                             "(--set dataset=NAME trains the same protocol on another dataset).")
        return read_config(a.config), {}
    name = preset_for(a.dataset, a.preset, DEFAULT_CELL["dataset"])
    dataset = a.dataset or PRESETS[name]["dataset"]  # a preset named alone trains on its own dataset
    return {**DEFAULT_CELL, "steps": PRESETS[name]["budgets"][0], **preset_protocol(name, dataset)}, PRESETS[name]


def preset_budget(cell: dict, protocol: dict, preset: dict, a: argparse.Namespace) -> dict:
    """Steps, batch and epochs of a single cell, as a study of its preset would run it: the regime's own settings
    (``per_regime``) where no flag or --set names them, and under an epoch preset its first budget in epochs (unless
    --steps says otherwise) over IPC x classes images; a full-data cell matches --ipc's subset cell."""
    from study.core.protocol import batch_size_for, steps_for
    from study.runs.config import FULL_DATA_IPC
    from study.runs.spec import class_count, overridden, regime_protocol, without_overridden

    explicit = overridden(a.overrides) | {s for f, s in CELL_FLAGS.items() if getattr(a, f) is not None}
    protocol = regime_protocol(protocol, without_overridden(preset.get("per_regime", {}), explicit), cell["regime"])
    if preset.get("budget_unit") == "epochs" and a.steps is None:
        steps, batch, budget = steps_for(preset["budgets"][0], "epochs", cell["ipc"],
                                         class_count(protocol["dataset"], cell.get("data_root")),
                                         batch_size_for(protocol["batch_size"], cell["ipc"]))
        return {**protocol, "steps": steps, "batch_size": batch, "epochs": budget}
    ipc = FULL_DATA_IPC if cell["selector"] == "full" else cell["ipc"]
    return {**protocol, "batch_size": batch_size_for(protocol["batch_size"], ipc)}


def config_from_args(a: argparse.Namespace) -> TrialConfig:
    from study.runs.spec import PROTOCOL_FIELDS, apply_overrides

    cell, preset = base_cell(a)
    cell.update({setting: getattr(a, flag) for flag, setting in CELL_FLAGS.items() if getattr(a, flag) is not None})
    if a.data_root is not None:
        cell["data_root"] = a.data_root
    protocol, params, _ = apply_overrides({k: cell[k] for k in PROTOCOL_FIELDS if k in cell}, a.overrides)
    others = sorted(set(params) - {cell["selector"]})
    if others:
        raise StudyError(f"Parameters were set for the selector(s) {', '.join(others)}, but this trial runs "
                         f"{cell['selector']!r}.")
    selector_params = {**cell.get("selector_params", {}), **params.get(cell["selector"], {})}
    protocol = preset_budget(cell, protocol, preset, a)
    return TrialConfig.from_dict({**cell, **protocol, "selector_params": selector_params})


@friendly_errors
def main(argv=None) -> None:
    a = parse(argv)
    cfg = config_from_args(a)
    validate_trial(cfg)
    from study.runs.trial import run_trial

    outcome = run_trial(cfg, a.cache_dir, a.device)
    m = outcome.metrics()
    if a.json:
        print(json.dumps({"config": cfg.to_dict(), "hash": cfg.hash, **m}, indent=1))
    else:
        print(f"{cfg.label()}: test accuracy {mean_std(m['test_acc_mean'], m['test_acc_std'])} % over {cfg.seeds} "
              f"seed(s), {m['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
