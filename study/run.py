"""A single trial from the command line, for people who want one number.

    python -m study.run --dataset digits --selector random --ipc 10 --regime hl --steps 300
"""
from __future__ import annotations

import argparse
import json

from study.cli import friendly_errors
from study.analysis.summary import mean_std
from study.runs.config import TrialConfig
from study.runs.validate import validate_trial


def parse(argv=None) -> argparse.Namespace:
    d = TrialConfig()
    proto = d.protocol
    p = argparse.ArgumentParser(prog="python -m study.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default=proto.model)
    p.add_argument("--selector", default=d.selector)
    p.add_argument("--ipc", type=int, default=d.ipc)
    p.add_argument("--regime", default=proto.regime)
    p.add_argument("--steps", type=int, default=proto.steps)
    p.add_argument("--batch-size", type=int, default=proto.batch_size)
    p.add_argument("--recipe", default=proto.recipe)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--cache-dir", default=None, help="preparation cache (default ~/.cache/hardtruths)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the full outcome as JSON")
    return p.parse_args(argv)


@friendly_errors
def main(argv=None) -> None:
    a = parse(argv)
    cfg = TrialConfig.from_dict(dict(dataset=a.dataset, data_root=a.data_root, model=a.model, selector=a.selector,
                                     ipc=a.ipc, regime=a.regime, steps=a.steps, batch_size=a.batch_size,
                                     recipe=a.recipe, seeds=a.seeds))
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
