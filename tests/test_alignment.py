"""The compute-alignment spaces: the scoring run's ratio over two decades, on a grid and under TPE."""
from __future__ import annotations

import dataclasses

from study.runs.spec import resolve_spec, validate_spec
from study.scaling import main
from study.selection import build_selector

RATIOS = [2.0 ** k for k in range(-4, 5)]


def test_alignment_grid_runs_both_methods_at_every_ratio(fashion_mnist_root):
    spec = resolve_spec("alignment_grid", data_root=fashion_mnist_root)
    validate_spec(spec)
    assert spec.preset == "fashion-mnist-paper" and set(spec.ipc) == {10, 50} and set(spec.regimes) == {"hl", "sl"}
    assert spec.budget_unit == "epochs" and max(spec.budgets) / min(spec.budgets) >= 10 ** 1.5
    assert max(spec.budgets) == 300 and spec.seeds == 3  # the paper's budget; seeds for the bootstrap interval
    grid, refs = spec.searched_cells(), spec.reference_cells()
    per_cell = len(spec.ipc) * len(spec.regimes) * len(spec.budgets)
    assert len(grid) == 2 * 5 * per_cell and len(refs) == per_cell
    assert {(c.selector, c.selector_params["ratio"]) for c in grid} == {
        (s, r) for s in ("cad_prune", "ca2d") for r in (1 / 16, 1 / 4, 1.0, 4.0, 16.0)}
    assert {c.selector for c in refs} == {"random"}
    assert spec.trial_count() == len({c.hash for c in spec.cells()})


def test_ca2d_alignment_searches_the_ratio_on_validation_accuracy(fashion_mnist_root):
    spec = resolve_spec("ca2d_alignment", data_root=fashion_mnist_root)
    validate_spec(spec)
    assert spec.kind == "optuna" and spec.metric == "val_acc_mean" and spec.mode == "max"
    assert 2 <= spec.samples_per_group() == spec.num_samples < len(RATIOS), "TPE chooses which ratios to train"
    asked_for_more = dataclasses.replace(spec, num_samples=16)
    assert asked_for_more.samples_per_group() == len(RATIOS), "a search trains each point at most once"
    assert asked_for_more.trial_count() == len(spec.searched_cells()) * len(RATIOS) + len(spec.reference_cells())
    assert spec.search == {"selector_params.ratio": {"type": "categorical", "choices": RATIOS}}
    groups, refs = spec.searched_cells(), spec.reference_cells()
    # a search group holds the ratio unset, so it never shares a hash with the ratio-1 reference cell
    assert all(c.selector_params == {"ratio": None} for c in groups)
    assert not {c.hash for c in groups} & {c.hash for c in refs}
    assert {c.selector for c in refs} == {"random", "cad_prune", "ca2d"}
    chosen = groups[0].with_choices({"selector_params.ratio": 0.25})
    assert build_selector(chosen.selector, **chosen.selector_params).p.ratio == 0.25


def test_dry_run_counts_the_alignment_trials(capsys, fashion_mnist_root):
    assert main(["--space", "ca2d_alignment", "--data-root", fashion_mnist_root, "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = resolve_spec("ca2d_alignment", data_root=fashion_mnist_root)
    assert f"total: {spec.trial_count()} trials" in out
    assert f"each of the {len(spec.searched_cells())} search groups runs {spec.num_samples} Optuna trials" in out


def test_the_search_never_repeats_a_point_and_ends_when_the_space_is_spent():
    """TPE over four ratios: each is trained once, a repeat of a finished point is told its known value, a
    repeat of a running one is dropped, and the fifth ask ends the search instead of training a repeat."""
    import optuna
    from ray.tune.search import Searcher

    from trainables.tune_study import FinalResultSearch

    def accuracy(ratio):
        return ratio / 10

    searcher = FinalResultSearch(space={"ratio": optuna.distributions.CategoricalDistribution([1, 2, 3, 4])},
                                 metric="acc", mode="max", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    proposed = {}
    for batch in (["a", "b"], ["c", "d"]):  # two in flight at once, as under the concurrency limiter
        for trial_id in batch:
            proposed[trial_id] = searcher.suggest(trial_id)["ratio"]
        for trial_id in batch:
            searcher.on_trial_complete(trial_id, {"acc": accuracy(proposed[trial_id])})
    assert sorted(proposed.values()) == [1, 2, 3, 4]
    assert searcher.suggest("e") == Searcher.FINISHED
    told = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(told) > 4, "TPE repeated points on the way, and each repeat was told, not trained"
    assert all(t.value == accuracy(t.params["ratio"]) for t in told)
