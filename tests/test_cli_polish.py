"""Issue 20's command-line polish, without Ray: help texts, presets by dataset, study.run reproducing a study
cell, run names of searched cells, MLflow's INFO lines, the trial progress bar."""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from study.runs.config import TrialConfig
from study.runs.spec import resolve_spec

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("scaling", "run", "report", "export")


def help_entries(command: str, capsys) -> dict[str, str]:
    """Option -> its help text, read off ``python -m study.<command> --help``."""
    module = __import__(f"study.{command}", fromlist=["main"])
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    entries, current = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        m = re.match(r"  (-\S+)", line)
        if m:
            current = m.group(1).split(",")[0]
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_says_its_default_and_help_has_no_markup(command, capsys):
    entries = help_entries(command, capsys)
    assert len(entries) >= 6, entries
    missing = [opt for opt, text in entries.items() if opt != "-h" and "default" not in text and "required" not in text]
    assert not missing, f"study.{command}: no default shown for {missing}"
    module = __import__(f"study.{command}", fromlist=["main"])
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":(mod|func|class|data|meth):`", text)


def test_scaling_help_states_defaults_in_words(capsys):
    entries = help_entries("scaling", capsys)
    assert "(default: 1.0)" in entries["--cpus-per-trial"]
    assert "(default: quick)" in entries["--space"]
    assert "(default: hardtruths)" in entries["--experiment"]
    assert "(default: off)" in entries["--compile"]


def test_dataset_brings_its_own_preset():
    spec = resolve_spec("quick", dataset="fashion-mnist")
    assert spec.preset == "fashion-mnist"
    assert spec.protocol["batch_size"] == 128 and spec.protocol["teacher"]["epochs"] == 8
    assert spec.protocol["teacher"]["model_kwargs"] == {"width": 64}
    assert resolve_spec("quick").protocol["batch_size"] == 64, "no --dataset: the space's preset"
    named = resolve_spec("quick", preset="fashion-mnist", dataset="mnist")
    assert (named.preset, named.protocol["dataset"], named.protocol["batch_size"]) == ("fashion-mnist", "mnist", 128)


@pytest.mark.parametrize("dataset, says", [
    ("mnist", "The dataset 'mnist' has no preset; name the protocol to train it with, e.g. --preset digits"),
    ("nope", "Unknown dataset 'nope'"),
])
def test_a_dataset_without_a_preset_needs_one_named(dataset, says, capsys):
    from study.scaling import main

    with pytest.raises(SystemExit) as exit_:
        main(["--dataset", dataset, "--dry-run"])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_dry_run_prints_the_protocol_in_use(capsys, tmp_path, fashion_mnist_root):
    from study.scaling import main

    out = tmp_path / "never"
    assert main(["--dataset", "fashion-mnist", "--data-root", fashion_mnist_root, "--selectors", "random",
                 "--ipc", "1", "--regimes", "hl", "--dry-run", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "protocol (preset fashion-mnist) on fashion-mnist: " in said and "batch_size=128" in said
    assert '"epochs": 8' in said
    assert f"output folder: {out} (not created yet)" in said and "executor: inline" in said
    assert "total: 2 trials, 0 already finished" in said  # random x 1 IPC x 1 regime x the space's 1 budget + full data
    assert not out.exists()


def test_study_run_reproduces_a_study_cell(tmp_path):
    from study.run import config_from_args, parse

    cell = next(c for c in resolve_spec("quick", selectors="herding", ipc="5", regimes="sl_kd").cells()
                if c.selector == "herding")
    flags = config_from_args(parse(["--selector", "herding", "--ipc", "5", "--regime", "sl_kd", "--steps", "400",
                                    "--seeds", "2"]))
    assert flags.hash == cell.hash
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"config": cell.to_dict(), "status": "FINISHED"}))
    assert config_from_args(parse(["--config", str(record)])).hash == cell.hash
    changed = config_from_args(parse(["--config", str(record), "--steps", "50", "--set", "model_kwargs.width=8",
                                      "--selector", "aum", "--set", "selector_params.aum.keep=easy"]))
    assert changed.protocol.steps == 50 and changed.protocol.model_kwargs == {"width": 8}
    assert changed.selector_params == {"keep": "easy"} and changed.protocol.batch_size == 64
    preset = config_from_args(parse(["--preset", "fashion-mnist", "--dataset", "mnist"]))
    assert (preset.dataset, preset.protocol.batch_size, preset.protocol.steps) == ("mnist", 128, 500)


@pytest.mark.parametrize("args, says", [
    (["--preset", "digits"], "--config already fixes the dataset"),
    (["--set", "selector_params.dm.iterations=3"], "set for the selector 'dm', which does not run here (selectors "
                                                   "run: random)"),
])
def test_study_run_refuses_conflicting_settings(args, says, tmp_path, capsys):
    from study.run import main

    config = tmp_path / "config.json"
    config.write_text(json.dumps(TrialConfig().to_dict()))
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(config), *args])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


def test_searched_runs_are_named_with_their_values():
    cell = TrialConfig(selector="cad_prune", ipc=10)
    chosen = cell.with_choices({"selector_params.ratio": 0.0625, "selector_params.W": 3})
    assert chosen.label() == "cad_prune ipc=10 hl steps=1000 W=3 ratio=0.0625"
    assert cell.label() == "cad_prune ipc=10 hl steps=1000"


def test_mlflow_info_lines_are_silenced(tmp_path):
    code = ("import sys; from study.runs.tracking import Tracker, configure_client\n"
            "if sys.argv[1] == 'configured': configure_client()\n"
            "Tracker('sqlite:///' + sys.argv[2], 'e')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    said = {}
    for mode in ("configured", "bare"):
        proc = subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / f"{mode}.db")], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        said[mode] = proc.stdout + proc.stderr
    assert "INFO mlflow" in said["bare"], "without the product's settings MLflow says INFO lines"
    assert "INFO" not in said["configured"]


def test_progress_bar_counts_trials_with_an_eta(tmp_path):
    from study.runs.record import failure_record
    from trainables.progress import TrialLines

    screen = io.StringIO()
    cfg = TrialConfig.from_dict({"ipc": 2, "steps": 20})
    view = TrialLines(total=3, done_before=1, console=Console(file=screen, force_terminal=True, width=100))
    pickle.dumps(view)  # Tune pickles its callbacks, and with them the view, with the experiment state
    with view:
        view.ended(failure_record(cfg, "boom"))
        view.progress.refresh()
    bar = screen.getvalue()
    assert "2/3" in bar and "ETA" in bar and "elapsed" in bar
    assert "[2/3] random ipc=2 hl steps=20: FAILED: boom" in bar, "the trial's line is printed above the bar"
    quiet = io.StringIO()
    with TrialLines(total=1, console=Console(file=quiet)):
        pass
    assert quiet.getvalue() == "", "no bar where the output is not a terminal"


def test_the_callback_hands_a_trial_to_the_sink_and_the_view(tmp_path, capsys):
    """A trial Tune reports as started, training and failed reaches MLflow (a live run that ends FAILED),
    results.csv and the terminal, through the callback built with the trial's cells."""
    from types import SimpleNamespace

    from study.runs.results_table import ResultsTable
    from study.runs.sink import TrialSink
    from study.runs.tracking import Tracker, default_tracking_uri
    from trainables.callbacks import StudyCallback
    from trainables.executors import PROGRESS_METRICS, PROGRESS_STEP
    from trainables.progress import TrialLines

    tracker = Tracker(default_tracking_uri(tmp_path), "callback")
    parent = tracker.study_run("h", "callback", {})
    cells = [TrialConfig.from_dict({"ipc": 2, "steps": 20}), TrialConfig.from_dict({"ipc": 3, "steps": 20})]
    view = TrialLines(total=2, console=Console(file=io.StringIO()))
    callback = StudyCallback(cells, TrialSink(tracker, parent, ResultsTable(tmp_path)), view)
    pickle.dumps(callback)
    trial = SimpleNamespace(trial_id="t1", config={"cell": 1}, get_error=lambda: "Boom: the student diverged")
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {PROGRESS_STEP: 10, PROGRESS_METRICS: {"val_acc_curve_seed0": 0.5}})
    callback.on_trial_error(0, [], trial)
    [run] = tracker.children(parent)
    assert run.info.status == "FAILED" and run.data.tags["config_hash"] == cells[1].hash
    assert [m.step for m in tracker.client.get_metric_history(run.info.run_id, "val_acc_curve_seed0")] == [10]
    assert ResultsTable(tmp_path).rows[cells[1].hash]["status"] == "FAILED"
    assert view.done == 1 and "random ipc=3 hl steps=20: FAILED: Boom: the student diverged" in capsys.readouterr().out
