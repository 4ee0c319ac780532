"""Named study spaces: which cells a study runs, as data.

``grid`` spaces list axes whose product is the set of trials; every trial runs
once. ``optuna`` spaces fix some axes as a grid of groups and let Optuna search
the named parameters inside each group for ``num_samples`` trials. Grid cells
(and an optuna space's references) run through Tune's own grid variant
generation, so a cluster's autoscaler sees every pending trial; searches run
through Optuna's TPE (trainables.tune_study). ``"selectors": "all"`` means every registered selector at run
time, so a new selector joins the default study by registering.
"""

# Compute alignment (docs/alignment.md): is the paper's compute match, a scoring run that sees as many images as the
# student (ratio 1), where CAD-Prune and CA2D do best? Both spaces vary the scoring run's ratio over two decades
# on a log grid, so scoring runs are cached and shared, at IPC 10 and 50 under the paper's HL and SL protocols.
# Budgets in epochs over the subset, 1.5 decades (33x) up to the paper's 300 (the preset counts budgets in epochs).
# The TPE search runs 2 seeds; the grid 3 (docs/alignment.md).
ALIGNMENT_CELLS = {
    "preset": "fashion-mnist-paper",
    "selectors": ["cad_prune", "ca2d"],
    "ipc": [10, 50],
    "regimes": ["hl", "sl"],
    "budgets": [9, 30, 100, 300],
    "seeds": 2,
    "full_data_reference": False,
}
RATIOS = [2.0 ** k for k in range(-4, 5)]  # 1/16 .. 16, 9 points

SPACES = {
    "quick": {
        "kind": "grid",
        "preset": "digits",
        "selectors": "all",
        # Two IPCs keep it under 10 minutes on 2 CPU cores with every selector (a trial's 2 x 400 steps are most of its
        # cost, benchmarks/README.md, `quick_study.py`); at the digits preset's T = 1 the protocol check passes.
        "ipc": [1, 10],
        "regimes": ["hl", "sl", "sl_kd"],
        "budgets": [400],
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
    # The paper's method comparison (its Tab. 11 columns) under its own HL and SL protocols (Tab. 4) on a preset
    # that follows them: the coresets, the paper's CAD-Prune and CA2D, the DD methods and R-CAD.
    "paper_methods": {
        "kind": "grid",
        "preset": "fashion-mnist-paper",
        "selectors": ["random", "herding", "kcenter", "el2n", "cad_prune", "ca2d", "rded", "dm", "rcad"],
        "ipc": [10, 50],
        "regimes": ["hl", "sl"],
        "seeds": 3,
        "full_data_reference": True,
    },
    # The whole accuracy-versus-r curve per cell, with 3 seeds for the report's bootstrap interval of the best r.
    "alignment_grid": {
        "kind": "grid",
        **ALIGNMENT_CELLS,
        "seeds": 3,
        "references": ["random"],
        "selector_grid": {"ratio": [1 / 16, 1 / 4, 1.0, 4.0, 16.0]},
    },
    # TPE over the ratio grid, in order (a ratio's neighbours inform it), 6 of its 9 points a (method, IPC, regime,
    # budget) on validation accuracy (2 random start-up points, then 4 that TPE picks; a search never trains a
    # point twice, so 9 would be the grid); the references
    # add random and both methods at ratio 1 to every cell.
    "ca2d_alignment": {
        "kind": "optuna",
        **ALIGNMENT_CELLS,
        "references": ["random", "cad_prune", "ca2d"],
        "search": {"selector_params.ratio": {"type": "ordered", "choices": RATIOS}},
        "num_samples": 6,
        "metric": "val_acc_mean",
        "mode": "max",
    },
}
