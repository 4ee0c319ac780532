"""The compute-alignment spaces: the scoring run's ratio over two decades, on a grid and under TPE."""
from __future__ import annotations

import dataclasses

import pytest

from study.core.errors import StudyError
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
    assert spec.search == {"selector_params.ratio": {"type": "ordered", "choices": RATIOS}}
    groups, refs = spec.searched_cells(), spec.reference_cells()
    # a search group holds the ratio unset, so it never shares a hash with the ratio-1 reference cell
    assert all(c.selector_params == {"ratio": None} for c in groups)
    assert not {c.hash for c in groups} & {c.hash for c in refs}
    assert {c.selector for c in refs} == {"random", "cad_prune", "ca2d"}
    assert spec.selections_known_ahead(spec.cells()) == refs, "a group's ratio is Optuna's, so not made ahead"
    chosen = groups[0].with_choices({"selector_params.ratio": 0.25})
    assert build_selector(chosen.selector, **chosen.selector_params).p.ratio == 0.25


def test_dry_run_counts_the_alignment_trials(capsys, fashion_mnist_root):
    assert main(["--space", "ca2d_alignment", "--data-root", fashion_mnist_root, "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = resolve_spec("ca2d_alignment", data_root=fashion_mnist_root)
    assert f"total: {spec.trial_count()} trials" in out
    assert f"each of the {len(spec.searched_cells())} search groups runs {spec.num_samples} Optuna trials" in out


def test_the_search_never_repeats_a_point_and_ends_when_the_space_is_spent():
    """TPE over four ordered ratios: each is trained once, a repeat of a finished point is told its known value,
    a repeat of a running one is dropped, and the fifth ask ends the search instead of training a repeat. The
    trials get the ratios themselves; Optuna works on their positions."""
    import optuna
    from ray.tune.search import Searcher

    from trainables.tune_study import FinalResultSearch

    choices = [0.25, 0.5, 1.0, 2.0]

    def accuracy(ratio):
        return ratio / 10

    searcher = FinalResultSearch({"ratio": {"type": "ordered", "choices": choices}}, [], metric="acc", mode="max",
                                 sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    proposed = {}
    for batch in (["a", "b"], ["c", "d"]):  # two in flight at once, as under the concurrency limiter
        for trial_id in batch:
            proposed[trial_id] = searcher.suggest(trial_id)["ratio"]
        for trial_id in batch:
            searcher.on_trial_complete(trial_id, {"acc": accuracy(proposed[trial_id])})
    assert sorted(proposed.values()) == choices
    assert searcher.suggest("e") == Searcher.FINISHED
    told = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(told) > 4, "TPE repeated points on the way, and each repeat was told, not trained"
    assert all(t.value == accuracy(choices[t.params["ratio"]]) for t in told)


def test_a_resumed_search_is_told_its_finished_points_at_their_positions():
    import optuna

    from trainables.tune_study import FinalResultSearch, position

    assert position(["small", "large"], "large") == 1 and position([0.25, 0.5, 1.0], 0.5000000001) == 1
    searcher = FinalResultSearch({"ratio": {"type": "ordered", "choices": [0.25, 0.5, 1.0]}}, [({"ratio": 0.5}, 0.3)],
                                 metric="acc", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    [done] = searcher._ot_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert done.params["ratio"] == 1 and done.value == 0.3
    assert searcher.suggest("next")["ratio"] in (0.25, 1.0), "the finished ratio is not trained again"


@pytest.mark.parametrize("search, needle", [
    ({"selector_params.ratio": {"type": "normal", "choices": [1]}}, "needs a type"),
    ({"selector_params.ratio": {"type": "ordered"}}, "needs choices"),
    ({"lr": {"type": "loguniform", "low": 1e-3}}, "needs low and high"),
])
def test_a_malformed_search_is_refused_before_compute(search, needle, fashion_mnist_root):
    spec = dataclasses.replace(resolve_spec("ca2d_alignment", data_root=fashion_mnist_root), search=search)
    with pytest.raises(StudyError, match=needle):
        validate_spec(spec)
