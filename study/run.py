"""A single trial from the command line: one number, or one cell of a study reproduced.

    python -m study.run --dataset digits --selector random --ipc 10 --regime hl --steps 300
    python -m study.run --preset fashion-mnist --selector herding --ipc 10 --set model_kwargs.width=64
    python -m study.run --config config.json          # a trial's resolved config: reruns that cell
    python -m study.run --selector dm --ipc 1 --print-config > cell.json

The cell is resolved as a study resolves it (study.runs.spec.resolve_cell):
the protocol comes from a preset, the one --preset names, else the dataset's
own (a dataset without one needs --preset); --set takes the same key=value
settings as python -m study.scaling, checked the same way. --config FILE takes
a trial's resolved config instead: the config.json artifact of its MLflow run,
the record.json in its Tune checkpoint, this command's --json output or its
--print-config output; the other flags and --set then change single settings
of it.
"""
from __future__ import annotations

import argparse
import json

from search_spaces import DEFAULT_CELL

from study.cli import add_resolution_args, friendly_errors, parser, print_config, read_config
from study.analysis.summary import mean_std
from study.runs.config import TrialConfig
from study.runs.validate import validate_trial

# flag -> the setting it sets as a --set would (a protocol setting every preset fixes)
PROTOCOL_FLAGS = {"model": "model", "batch_size": "batch_size", "recipe": "recipe"}


def parse(argv=None) -> argparse.Namespace:
    p = parser("python -m study.run", __doc__)
    add_resolution_args(p, "trial config", "config.json, record.json or --json output")
    p.add_argument("--selector", default=None, help=f"selector (default: {DEFAULT_CELL['selector']}, or --config's)")
    p.add_argument("--ipc", type=int, default=None, help=f"images per class (default: {DEFAULT_CELL['ipc']}, "
                                                         f"or --config's)")
    p.add_argument("--regime", default=None, help=f"label regime: hl, sl, sl_kd (default: {DEFAULT_CELL['regime']}, "
                                                  f"or --config's)")
    p.add_argument("--steps", type=int, default=None,
                   help="student steps at the preset's batch size; leave it out under a preset that counts budgets "
                        "in epochs (the *-paper presets) to get the study's cell, whose steps and batch follow the "
                        "IPC (default: the preset's first budget, or --config's)")
    p.add_argument("--batch-size", type=int, default=None, help="student batch size (default: the preset's)")
    p.add_argument("--model", default=None, help="student model: convnet, resnet18, timm:<name> (default: the "
                                                 "preset's)")
    p.add_argument("--recipe", default=None, help="optimiser recipe: sgd-v1, adamw-v1 (default: the preset's)")
    p.add_argument("--seeds", type=int, default=None, help=f"repeats (default: {DEFAULT_CELL['seeds']}, or "
                                                           f"--config's)")
    p.add_argument("--cache-dir", default=None, help="preparation cache (default: ~/.cache/hardtruths)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    p.add_argument("--json", action="store_true", help="print the full outcome as JSON")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> TrialConfig:
    from study.runs.spec import resolve_cell

    flags = [f"{setting}={json.dumps(getattr(a, flag))}" for flag, setting in PROTOCOL_FLAGS.items()
             if getattr(a, flag) is not None]
    return resolve_cell(a.selector, a.ipc, a.regime, a.steps, a.seeds, a.preset, a.dataset, a.data_root,
                        a.overrides + flags, read_config(a.config) if a.config else None)


@friendly_errors
def main(argv=None) -> None:
    a = parse(argv)
    cfg = config_from_args(a)
    validate_trial(cfg)
    if a.print_config:
        print_config(cfg.to_dict())
        return
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
