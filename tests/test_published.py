"""The paper's published cells as data, which study cells match them, and "paper: X" beside them."""
from __future__ import annotations

import pandas as pd
import pytest

import study.runs.spec as spec_module
from search_spaces import PRESETS
from search_spaces.published import MODELS, PUBLISHED
from study.analysis.published import trial_config, with_published
from study.analysis.trials import trial_table
from study.report import analyse, print_report
from study.runs.results_table import ResultsTable
from study.runs.published import published_cell
from study.runs.record import flatten
from study.scaling import print_summary, summarise_results
from study.selection import SELECTORS


def test_the_table_holds_the_issues_numbers_under_registered_names():
    assert PUBLISHED[("cifar100", "ConvNet-D3", "cifar100-paper", "random", 10, "hl")] == (18.64, 0.25)
    assert PUBLISHED[("cifar100", "ConvNet-D3", "cifar100-paper", "cad_prune", 50, "hl")] == (37.87, 0.16)
    assert PUBLISHED[("cifar100", "ConvNet-D3", "cifar100-paper", "dm", 10, "sl")] == (26.13, 0.10)
    assert PUBLISHED[("tinyimagenet", "ConvNet-D4", "tinyimagenet-paper", "kcenter", 50, "sl")] == (37.45, 0.21)
    assert len(PUBLISHED) == 2 * (8 + 6)
    for dataset, model, preset, selector, ipc, regime in PUBLISHED:
        SELECTORS.get(selector)
        assert PRESETS[preset]["dataset"] == dataset
        assert (PRESETS[preset]["model"], PRESETS[preset]["model_kwargs"]) == MODELS[model]


@pytest.fixture
def paper_cells(monkeypatch):
    """The cifar100-paper study's cells, without CIFAR-100 on disk (its 100 classes are all the spec reads)."""
    monkeypatch.setattr(spec_module, "class_count", lambda dataset, root: 100)

    def cells(**kw):
        spec = spec_module.resolve_spec("paper", preset="cifar100-paper", selectors="random,kcenter,cad_prune",
                                        ipc="10,50", regimes="hl,sl,sl_kd", **kw)
        return {(c.selector, c.ipc, c.protocol.regime): c for c in spec.cells()}
    return cells


def test_only_cells_under_the_papers_protocol_match(paper_cells):
    cells = paper_cells()
    assert published_cell(cells[("random", 10, "hl")].to_dict()) == (18.64, 0.25)
    assert published_cell(cells[("kcenter", 50, "sl")].to_dict()) == (46.24, 0.12)
    assert published_cell(cells[("random", 10, "sl_kd")].to_dict()) is None  # no published KD+SL cell
    assert published_cell(cells[("full", 0, "hl")].to_dict()) is None
    narrow = paper_cells(overrides=["model_kwargs.width=64"])
    assert published_cell(narrow[("random", 10, "hl")].to_dict()) is None
    tuned = dict(cells[("cad_prune", 10, "hl")].to_dict(), selector_params={"J": 3})
    assert published_cell(tuned) is None
    in_steps = dict(cells[("random", 10, "hl")].to_dict(), epochs=None)
    assert published_cell(in_steps) is None


def results_record(cfg, accs):
    return {"config": cfg.to_dict(), "config_hash": cfg.hash, "label": cfg.label(), "status": "FINISHED",
            "metrics": {**{f"test_acc_seed{r}": a for r, a in enumerate(accs)}, "test_acc_mean": sum(accs) / len(accs)},
            "curves": {}, "tags": {}, "error": ""}


def test_summary_and_report_put_the_paper_beside_matching_cells(paper_cells, tmp_path, capsys):
    cells = paper_cells()
    results = ResultsTable(tmp_path)
    for key, accs in {("random", 10, "hl"): [0.17, 0.18], ("random", 10, "sl_kd"): [0.30, 0.31],
                      ("kcenter", 50, "sl"): [0.45, 0.47]}.items():
        results.add(results_record(cells[key], accs))
    for frame in (results.frame(), ResultsTable(tmp_path).frame()):  # in memory and read back from results.csv
        summary = summarise_results(frame)
        paper = dict(zip(zip(summary["selector"], summary["regime"]), summary["paper_mean"]))
        assert paper[("random", "hl")] == pytest.approx(0.1864) and paper[("kcenter", "sl")] == pytest.approx(0.4624)
        assert pd.isna(paper[("random", "sl_kd")])
    print_summary(summary)
    out = " ".join(capsys.readouterr().out.split())
    assert "17.5 +- 0.7 paper: 18.64" in out and "46.0 +- 1.4 paper: 46.24" in out and out.count("paper:") == 2
    trials = trial_table(ResultsTable(tmp_path).frame().to_dict("records"))
    assert trial_config(trials.iloc[0].to_dict())["model_kwargs"] == {"width": 128, "depth": 3}
    report = analyse(trials)
    assert report.summary["paper_mean"].notna().sum() == 2
    print_report(report)
    said = " ".join(capsys.readouterr().out.split())
    assert "Against the paper" in said and "paper: 18.6 +- 0.2" in said and "-1.1" in said


def test_a_study_without_published_cells_gets_no_paper_column_values():
    from study.runs.config import TrialConfig

    cfg = TrialConfig.from_dict({"selector": "random", "ipc": 10, "regime": "hl", "steps": 100})
    trials = trial_table([{**flatten(cfg.to_dict()), "config_hash": cfg.hash, "status": "FINISHED",
                           "test_acc_seed0": 0.5, "test_acc_mean": 0.5}])
    summary = with_published(pd.DataFrame({"label": ["random"], "ipc": [10], "regime": ["hl"], "steps": [100]}),
                             trials)
    assert summary["paper_mean"].isna().all()
