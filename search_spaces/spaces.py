"""Named study spaces: which cells a study runs, as data.

``grid`` spaces list axes whose product is the set of trials; every trial runs
once. ``optuna`` spaces fix some axes as a grid of groups and let Optuna search
the named parameters inside each group for ``num_samples`` trials. Grid cells
(and an optuna space's references) run through Tune's own grid variant
generation, so a cluster's autoscaler sees every pending trial; searches run
through Optuna's TPE (trainables.tune_study). ``"selectors": "all"`` means every registered selector at run
time, so a new selector joins the default study by registering.
"""

# The cells both alignment spaces vary windows over (see the comment at ``difficulty_sweep``).
ALIGNMENT_CELLS = {
    "preset": "fashion-mnist",
    "selectors": ["cad_prune", "ca2d"],
    "window_params": {"beta": 0.0},
    "references": ["random", "cad_prune", "ca2d"],
    "ipc": [10, 50],
    "regimes": ["hl", "sl_kd"],
    "budgets": [30, 300, 1000],
    "seeds": 2,
    "full_data_reference": False,
}

SPACES = {
    "quick": {
        "kind": "grid",
        "preset": "digits",
        "selectors": "all",
        "ipc": [1, 5, 20],
        "regimes": ["hl", "sl", "sl_kd"],
        "budgets": [400],  # under 10 minutes on 2 CPU cores; at the digits preset's T = 1 the protocol check passes
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
    # CA2D alignment (docs/alignment.md): does the best difficulty window move with the compute budget, and does
    # CAD-Prune's rule predict it? Windows live on one axis per (dataset, teacher). The budgets run from starved
    # (tens of steps on a 100-image subset) to saturated, 1.5 decades. The references per (IPC, regime, budget):
    # random, and CAD-Prune / CA2D at their defaults, whose windows are the rule's prediction. The varied cells
    # take beta 0 so the windows map the whole axis, the tail CAD's rule drops included.
    "difficulty_sweep": {
        "kind": "grid",
        **ALIGNMENT_CELLS,
        "windows": {"widths": [0.1, 0.2], "step": 0.1},
    },
    "ca2d_alignment": {
        "kind": "optuna",
        **ALIGNMENT_CELLS,
        "search": {
            # lo = position * (1 - beta - width): every sampled window lies on the axis, none is clipped
            "selector_params.position": {"type": "uniform", "low": 0.0, "high": 1.0},
            "selector_params.width": {"type": "uniform", "low": 0.1, "high": 0.4},
        },
        "num_samples": 16,
        "metric": "val_acc_mean",
        "mode": "max",
    },
}
