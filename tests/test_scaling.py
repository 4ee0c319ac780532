"""The study command end to end: real Ray, a real MLflow SQLite store, real digits data."""
from __future__ import annotations

import pandas as pd
import pytest
import ray
from mlflow.tracking import MlflowClient

from study.runs.checkpoints import checkpointed
from study.scaling import main
from study.runs.spec import resolve_spec
from study.runs.tracking import Tracker, default_tracking_uri
from trainables.tune_study import RunOptions, run_study

SMALL = ["--selectors", "random,full", "--ipc", "1,3", "--regimes", "hl,sl_kd", "--budgets", "30", "--seeds", "2",
         "--space", "smoke", "--no-report"]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


def child_runs(out):
    client = MlflowClient(default_tracking_uri(out))
    exp = client.get_experiment_by_name("hardtruths")
    parents = client.search_runs([exp.experiment_id], "tags.`hardtruths.kind` = 'study'")
    assert len(parents) == 1
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return client, runs


def test_small_study_logs_every_trial_once_and_resumes(local_ray, tmp_path, cache_dir, capsys):
    out = tmp_path / "study"
    argv = SMALL + ["--out", str(out), "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    client, runs = child_runs(out)
    # 2 selectors x 2 IPC x 2 regimes, the 'full' selector collapses to one cell per regime: 4 + 2 random... see spec
    expected = {c.hash for c in resolve_spec("smoke", selectors="random,full", ipc="1,3", regimes="hl,sl_kd",
                                             budgets="30", seeds=2).cells()}
    assert {r.data.tags["config_hash"] for r in runs} == expected
    assert len(runs) == len(expected)
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert 0.0 <= r.data.metrics["test_acc_mean"] <= 1.0
        assert r.data.params["steps"] == "30" and r.data.params["seeds"] == "2"
        assert r.data.tags["regime"] in {"hl", "sl_kd"}
        assert r.data.tags["family"] == "coreset"
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    teacher = {r.data.metrics["teacher_test_acc"] for r in runs if r.data.tags["regime"] == "sl_kd"}
    assert len(teacher) == 1 and parent.data.metrics["teacher_test_acc"] == teacher.pop(), "the teacher, once"
    results = pd.read_csv(out / "results.csv")
    by_hash = {r.data.tags["config_hash"]: r.data.metrics["test_acc_mean"] for r in runs}
    assert len(results) == len(runs)
    for row in results.itertuples():
        assert row.test_acc_mean == pytest.approx(by_hash[row.config_hash])

    capsys.readouterr()
    assert main(argv) == 0
    assert "0 to run" in capsys.readouterr().out or len(child_runs(out)[1]) == len(runs)
    assert len(child_runs(out)[1]) == len(runs)

    victim = runs[0]
    client.delete_run(victim.info.run_id)
    results[results.config_hash != victim.data.tags["config_hash"]].to_csv(out / "results.csv", index=False)
    capsys.readouterr()
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert f"{len(runs)} cell(s) in the study, {len(runs) - 1} already finished" in said, "deleted by hand: rerun"
    _, rerun = child_runs(out)
    assert len(rerun) == len(runs)
    assert victim.data.tags["config_hash"] in {r.data.tags["config_hash"] for r in rerun}


def test_failing_trial_is_recorded_and_others_finish(local_ray, tmp_path, cache_dir):
    spec = resolve_spec("smoke", selectors="random", ipc="2", regimes="hl", budgets="20", seeds=1)
    good = spec.cells()
    bad = good[0].with_choices({"model_kwargs": {"width": 0}})
    spec.cells = lambda: good + [bad]
    out = tmp_path / "fail"
    tracker = Tracker(default_tracking_uri(out), "hardtruths")
    parent = tracker.study_run(spec.hash, "fail", spec.to_dict())
    run = run_study(spec, tracker, parent, RunOptions(out_dir=out, cache_dir=str(cache_dir), max_failures=1))
    status = {r.data.tags["config_hash"]: r for r in tracker.children(parent)}
    assert len(tracker.children(parent)) == len(good) + 1, "the failed trial's live run is its only run"
    assert status[bad.hash].info.status == "FAILED"
    assert "error" in status[bad.hash].data.tags
    assert all(status[c.hash].info.status == "FINISHED" for c in good)
    assert set(run.results.frame()["status"]) == {"FINISHED", "FAILED"}
    assert set(run.phases) == {"ray_start_s", "prepare_s", "trials_s"}, "the driver's phases come back timed"


def test_a_search_resumes_from_its_finished_trials(local_ray, tmp_path, cache_dir, capsys):
    """An optuna space runs one Tune search per group, each with its own callback; asked for more samples, a
    rerun hands the finished trials to Optuna, runs only the missing one and counts the study's trials whole."""
    import dataclasses

    base = resolve_spec("smoke", selectors="random", ipc="1", regimes="hl", budgets="20", seeds=1)
    spec = dataclasses.replace(base, kind="optuna", full_data_reference=False, num_samples=2,
                               search={"lr": {"type": "loguniform", "low": 1e-3, "high": 3e-3}})
    [group] = spec.cells()
    out = tmp_path / "search"
    tracker = Tracker(default_tracking_uri(out), "hardtruths")
    parent = tracker.study_run(spec.hash, "search", spec.to_dict())
    options = RunOptions(out_dir=out, cache_dir=str(cache_dir))
    first = run_study(spec, tracker, parent, options).results.frame()
    assert len(first) == 2 and set(first["search_group"]) == {group.hash} and first["lr"].nunique() == 2
    assert "[2/2]" in capsys.readouterr().out
    again = run_study(dataclasses.replace(spec, num_samples=3), tracker, parent, options).results.frame()
    assert len(again) == 3 and again["lr"].nunique() == 3, "the resumed search proposes a new point"
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("[3/3] "), "one more trial; the earlier ones count as done"
    assert len(tracker.children(parent)) == 3


def test_a_search_over_a_selector_parameter_makes_its_selections_in_its_trials(local_ray, tmp_path, cache_dir):
    """ca2d_alignment's shape: Optuna chooses cad_prune's ratio, so the group's selection cannot be made ahead
    (its ratio is unset until a trial has one); preparation still trains the teacher, and each trial selects at
    its own ratio. Asked for more trials than the two ratios, the search trains each once."""
    import dataclasses

    base = resolve_spec("smoke", selectors="cad_prune", ipc="1", regimes="hl", budgets="20", seeds=1)
    spec = dataclasses.replace(base, kind="optuna", num_samples=5, selector_params={"cad_prune": {"scoring_batch": 64}},
                               search={"selector_params.ratio": {"type": "categorical", "choices": [0.5, 2.0]}})
    assert spec.samples_per_group() == 2 and spec.trial_count() == 2
    out = tmp_path / "ratio-search"
    tracker = Tracker(default_tracking_uri(out), "hardtruths")
    parent = tracker.study_run(spec.hash, "ratio-search", spec.to_dict())
    frame = run_study(spec, tracker, parent, RunOptions(out_dir=out, cache_dir=str(cache_dir))).results.frame()
    assert set(frame["status"]) == {"FINISHED"} and sorted(frame["selector_params.ratio"]) == [0.5, 2.0]
    assert (frame["selection.ratio"] == frame["selector_params.ratio"]).all()
    assert frame.set_index("selector_params.ratio")["selection.scoring_train_images"].to_dict() == {0.5: 640, 2.0: 2560}


def test_trial_runs_are_live_and_a_killed_one_is_closed(local_ray, tmp_path, cache_dir):
    """A trial's run is RUNNING while it trains, with its evaluation points arriving as it goes; it ends
    FINISHED, spanning them. A run a killed study left RUNNING (started, a first point streamed) is closed as
    KILLED, does not count as finished, and the trial runs again in a fresh run."""
    spec = resolve_spec("smoke", selectors="random", ipc="2", regimes="hl", budgets="100", seeds=2)
    [cell] = spec.cells()
    out = tmp_path / "live"
    tracker = Tracker(default_tracking_uri(out), "hardtruths")
    parent = tracker.study_run(spec.hash, "live", spec.to_dict())
    killed = tracker.start_trial(parent, cell.to_dict(), cell.hash, cell.label())
    tracker.log_progress(killed, 20, {"val_acc_curve_seed0": 0.3})
    run_study(spec, tracker, parent, RunOptions(out_dir=out, cache_dir=str(cache_dir)))
    runs = {r.info.run_id: r for r in tracker.children(parent)}
    assert runs[killed].info.status == "KILLED"
    [live] = [r for r in runs.values() if r.info.status == "FINISHED"]
    assert len(runs) == 2 and live.data.tags["config_hash"] == cell.hash
    for seed in (0, 1):
        history = sorted(tracker.client.get_metric_history(live.info.run_id, f"val_acc_curve_seed{seed}"),
                         key=lambda m: m.step)
        assert [m.step for m in history] == list(range(10, 101, 10))
        # Streamed while the run was open: each point written when its step was reached (stamped in step order,
        # each write after the last), all inside the run's span; a curve logged in one batch at the end would
        # carry one stamp.
        stamps = [m.timestamp for m in history]
        assert live.info.start_time <= stamps[0] and stamps[-1] <= live.info.end_time
        assert stamps == sorted(stamps) and len(set(stamps)) > 1, stamps
        assert 0.0 <= min(m.value for m in history) and max(m.value for m in history) <= 1.0
    assert len(tracker.client.get_metric_history(live.info.run_id, "val_acc")) == 10, "and the seeds' mean curve"
    assert tracker.finished_hashes(parent) == {cell.hash}


def test_both_executors_agree(local_ray, tmp_path, cache_dir):
    """Inline, Ray Train with one worker, and Ray Train with two DDP workers (gloo) train the same student."""
    accs = {}
    for executor, workers in (("inline", "1"), ("ray-train", "1"), ("ray-train", "2")):
        out = tmp_path / f"{executor}-{workers}"
        cpus = str(1 / int(workers) - 0.01)  # the workers and the Tune trial's sliver fit the 2 local CPUs
        assert main(["--space", "smoke", "--selectors", "random", "--ipc", "2", "--regimes", "hl", "--budgets", "25",
                     "--seeds", "1", "--no-report", "--executor", executor, "--workers-per-trial", workers,
                     "--cpus-per-trial", cpus, "--out", str(out), "--cache-dir", str(cache_dir)]) == 0
        _, runs = child_runs(out)
        assert [(r.data.tags["executor"], r.data.tags["workers"]) for r in runs] == [(executor, workers)]
        assert runs[0].data.tags["precision"] == "fp32"
        assert set(checkpointed(out / "ray")) == {runs[0].data.tags["config_hash"]}, "found in its checkpoint"
        accs[executor, workers] = runs[0].data.metrics["test_acc_seed0"]
    assert accs["inline", "1"] == accs["ray-train", "1"]
    assert accs["ray-train", "2"] == pytest.approx(accs["inline", "1"], abs=2 / 360)  # float rounding of the all-reduce


def test_selector_params_reach_only_their_selector():
    plain = resolve_spec("smoke", selectors="random,dm")
    tuned = resolve_spec("smoke", selectors="random,dm", overrides=["selector_params.dm.iterations=50",
                                                                     "selector_params.dm.width=16"])
    params = {(c.selector, c.ipc): c.selector_params for c in tuned.cells()}
    assert params[("dm", 1)] == {"iterations": 50, "width": 16} and params[("random", 1)] == {}
    assert tuned.hash != plain.hash and plain.to_dict()["selector_params"] == {}


def test_dry_run_paper_counts_every_trial(capsys, fashion_mnist_root):
    assert main(["--space", "paper", "--data-root", fashion_mnist_root, "--dry-run"]) == 0
    out = capsys.readouterr().out
    from study.selection import SELECTORS

    spec = resolve_spec("paper", all_selectors=SELECTORS.names())
    assert f"total: {spec.trial_count()} trials" in out
    assert spec.trial_count() == (len(spec.selectors) * 4 * 3 * len(spec.budgets)) + 3 * len(spec.budgets)


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("argv, needle", [
    (["--selectors", "nope"], "Unknown selector 'nope'"),
    (["--ipc", "0"], "IPC must be at least 1"),
    (["--ipc", "500"], "at most 126, the smallest class of digits; got 500"),
    (["--budgets", "0"], "positive number of steps"),
    (["--seeds", "0"], "at least one seed"),
    (["--regimes", "xx"], "Unknown label regime"),
    (["--space", "nope"], "Unknown space"),
    (["--set", "bogus=1"], "Unknown override"),
    (["--tracking-uri", "http://127.0.0.1:9"], "does not answer"),
    (["--executor", "inline", "--workers-per-trial", "2"], "needs the ray-train executor"),
    (["--workers-per-trial", "3"], "must divide the batch size 64"),
])
def test_bad_input_fails_before_compute(argv, needle, dry_run, tmp_path, capsys):
    """The dry run refuses exactly what the run refuses, and a refused command leaves no output folder."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "o")] + (["--dry-run"] if dry_run else []))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_teacher_reports_each_epoch_while_it_trains(local_ray, tmp_path):
    """The teacher trains in a Ray task; its progress reaches the driver's output an epoch at a time, in order,
    before its test accuracy, and the accuracy it reports rises."""
    import re

    from study.core.protocol import Protocol, TeacherSpec
    from study.runs.config import TrialConfig
    from trainables.prepare import prepare_study

    cell = TrialConfig(selector="random", ipc=1, seeds=1, protocol=Protocol(regime="sl_kd", steps=5),
                       teacher=TeacherSpec(model="convnet", model_kwargs={"width": 16}, epochs=3))
    lines: list[str] = []
    prepare_study([cell], str(tmp_path / "cache"), say=lines.append)
    epochs = [re.search(r"teacher epoch (\d)/3: training accuracy ([\d.]+)%", line) for line in lines]
    epochs = [m for m in epochs if m]
    assert [m[1] for m in epochs] == ["1", "2", "3"], lines
    assert float(epochs[-1][2]) > float(epochs[0][2]) + 5, lines
    assert any("teacher test accuracy" in line for line in lines[lines.index(epochs[-1].string) + 1:]), lines
