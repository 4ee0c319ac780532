"""The compute-alignment experiment: its spaces expand to the cells the design asks for, and a real (tiny) study on
digits yields an alignment table and a rank correlation the report can stand on."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import ray

from study.report import build_report
from study.runs.ledger import Ledger
from study.runs.spec import resolve_spec, validate_spec, window_grid
from study.scaling import main
from study.selection.cad import CADParams
from trainables.tune_study import searched_points


def test_window_grid_is_every_decile_window_inside_the_axis():
    grid = window_grid([0.1, 0.2], 0.1)
    assert [w["lo"] for w in grid if w["width"] == 0.1] == pytest.approx([i / 10 for i in range(10)])
    assert [w["lo"] for w in grid if w["width"] == 0.2] == pytest.approx([i / 10 for i in range(9)])
    assert all(w["lo"] + w["width"] <= 1 + 1e-9 for w in grid)


def test_difficulty_sweep_expands_to_the_expected_cells():
    spec = resolve_spec("difficulty_sweep")
    validate_spec(spec)  # every window is one the selectors accept
    swept, refs = spec.searched_cells(), spec.reference_cells()
    cells = len(spec.ipc) * len(spec.regimes) * len(spec.budgets)
    assert len(swept) == 2 * 19 * cells and len(refs) == 3 * cells
    assert spec.trial_count() == len(swept) + len(refs) == len({c.hash for c in spec.cells()})
    windows = {(c.selector, c.selector_params["lo"], c.selector_params["width"]) for c in swept}
    assert ("ca2d", 0.9, 0.1) in windows and ("cad_prune", 0.8, 0.2) in windows and len(windows) == 2 * 19
    assert all(c.selector_params["beta"] == 0.0 for c in swept)
    assert {c.selector for c in refs} == {"random", "cad_prune", "ca2d"} and all(not c.selector_params for c in refs)


def test_ca2d_alignment_searches_both_methods_on_validation_accuracy():
    spec = resolve_spec("ca2d_alignment")
    assert spec.kind == "optuna" and spec.metric == "val_acc_mean" and spec.mode == "max"
    assert set(spec.selectors) == {"cad_prune", "ca2d"} and spec.num_samples >= 16
    assert set(spec.ipc) >= {10, 50} and set(spec.regimes) >= {"hl", "sl_kd"} and spec.seeds >= 2
    assert math.log10(max(spec.budgets) / min(spec.budgets)) >= 1.5 and min(spec.budgets) < 100
    groups, refs = spec.searched_cells(), spec.reference_cells()
    # a search group holds its searched parameters unset, so it never shares a hash with the rule's reference cell
    assert all(c.selector_params == {"beta": 0.0, "position": None, "width": None} for c in groups)
    assert not {c.hash for c in groups} & {c.hash for c in refs}
    assert spec.trial_count() == len(groups) * spec.num_samples + len(refs)
    chosen = groups[0].with_choices({"selector_params.position": 1.0, "selector_params.width": 0.4})
    assert CADParams.build(**chosen.selector_params).window(0.5, 10, 6000) == pytest.approx((0.6, 1.0))


def test_dry_run_counts_the_alignment_trials(capsys, fashion_mnist_root):
    assert main(["--space", "ca2d_alignment", "--preset", "fashion-mnist", "--data-root", fashion_mnist_root,
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    spec = resolve_spec("ca2d_alignment", preset="fashion-mnist")
    assert f"total: {spec.trial_count()} trials" in out
    assert f"each of the {len(spec.searched_cells())} search groups runs 16 Optuna trials" in out


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_tiny_real_alignment_study_reports_windows_and_a_correlation(local_ray, tmp_path, cache_dir, capsys):
    out = tmp_path / "study"
    argv = ["--space", "ca2d_alignment", "--preset", "digits", "--selectors", "cad_prune", "--ipc", "5",
            "--regimes", "hl", "--budgets", "20,200", "--seeds", "2", "--num-samples", "3",
            "--set", "teacher.epochs=30", "--out", str(out), "--cache-dir", str(cache_dir), "--no-report"]
    assert main(argv) == 0
    spec = resolve_spec("ca2d_alignment", preset="digits", selectors="cad_prune", ipc="5", regimes="hl",
                        budgets="20,200", seeds=2, overrides=["teacher.epochs=30", "num_samples=3"])
    ledger = Ledger(out)
    rows = [r for r in ledger.rows.values() if r.get("status") == "FINISHED"]
    assert len(rows) == spec.trial_count() == 2 * 3 + 3 * 2
    for cell in spec.searched_cells():  # TPE was fed the validation accuracy, never the test accuracy
        points = searched_points(ledger, cell, spec)
        assert len(points) == 3
        mine = [r for r in rows if r.get("search_group") == cell.hash]
        assert sorted(v for _, v in points) == sorted(r["val_acc_mean"] for r in mine)
    report = build_report(f"sqlite:///{out / 'mlflow.db'}", ledger_parent(out), out, show=False, log=False)
    table = report.alignment
    cad = table[table["selector"] == "cad_prune"].set_index("steps")
    assert list(cad.index) == [20, 200] and (cad["searched"] == 3).all()
    for steps in (20, 200):
        row = cad.loc[steps]
        assert 0 <= row["best_center"] <= 1 and 0 <= row["pred_lo"] < row["pred_hi"] <= 1
        assert 0 < row["u_star_mean"] <= 1 and len(row["seed_centers"]) == 2
        for acc in ("best_test_acc", "pred_test_acc", "random_test_acc"):
            assert 0.1 < row[acc] <= 1, (steps, acc, row[acc])
    assert cad.loc[20, "u_star_mean"] < cad.loc[200, "u_star_mean"]  # more compute, further frontier
    assert cad.loc[20, "pred_test_acc"] < cad.loc[200, "pred_test_acc"]
    corr = report.correlation.set_index("selector").loc["cad_prune"]
    assert corr["points"] == 4 and corr["budgets"] == 2
    if not pd.isna(corr["spearman"]):
        assert corr["ci_low"] <= corr["spearman"] <= corr["ci_high"]
    print(table.to_string())
    print(report.correlation.to_string())


def ledger_parent(out) -> str:
    from study.runs.tracking import find_parent

    _, parent = find_parent(f"sqlite:///{out / 'mlflow.db'}", "hardtruths", None)
    return parent
