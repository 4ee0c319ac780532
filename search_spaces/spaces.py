"""Named study spaces: which cells a study runs, as data.

``grid`` spaces list axes whose product is the set of trials; every trial runs
once. ``optuna`` spaces fix some axes as a grid of groups and let Optuna search
the named parameters inside each group for ``num_samples`` trials. Both are
run by the same code path (trainables.tune_study) through Ray Tune's
OptunaSearch. ``"selectors": "all"`` means every registered selector at run
time, so a new selector joins the default study by registering.
"""

SPACES = {
    "quick": {
        "kind": "grid",
        "preset": "digits",
        "selectors": "all",
        "ipc": [1, 5, 20],
        "regimes": ["hl", "sl", "sl_kd"],
        "budgets": [400],  # under 10 minutes on 2 CPU cores; soft-label full data within 1.7 points of hl
        "seeds": 2,
        "full_data_reference": True,
    },
    "smoke": {
        "kind": "grid",
        "preset": "digits",
        "selectors": ["random", "herding"],
        "ipc": [1, 5],
        "regimes": ["hl", "sl_kd"],
        "budgets": [100],
        "seeds": 2,
        "full_data_reference": False,
    },
    "paper": {
        "kind": "grid",
        "preset": "fashion-mnist",
        "selectors": "all",
        "ipc": [1, 10, 50, 100],
        "regimes": ["hl", "sl", "sl_kd"],
        "seeds": 3,
        "full_data_reference": True,
    },
    "ca2d_alignment": {
        "kind": "optuna",
        "preset": "fashion-mnist",
        "selectors": ["cad_prune"],
        "ipc": [10, 50],
        "regimes": ["hl"],
        "seeds": 2,
        "full_data_reference": False,
        "search": {
            "selector_params.center": {"type": "uniform", "low": 0.05, "high": 0.95},
            "selector_params.width": {"type": "uniform", "low": 0.05, "high": 0.5},
        },
        "num_samples": 12,
        "metric": "val_acc_mean",
        "mode": "max",
    },
}
