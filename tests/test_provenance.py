"""What a study's runs say about themselves, and reruns after the code changed: real Ray, real MLflow (SQLite),
real digits data."""
from __future__ import annotations

import json
import tempfile

import pandas as pd
import pytest
import ray
from mlflow.tracking import MlflowClient

import subprocess

from study.runs.provenance import code_version, git_dirty
from study.runs.tracking import GIT_DIRTY, default_tracking_uri, source_tags
from study.scaling import main

ARGS = ["--space", "smoke", "--selectors", "random,full", "--ipc", "2,10", "--regimes", "hl", "--budgets", "20",
        "--seeds", "1", "--no-report"]


@pytest.fixture(scope="module")
def trial_tmp(tmp_path_factory):
    """The trials' temporary folder (TMPDIR of every Ray worker), to see that trials leave nothing there."""
    return tmp_path_factory.mktemp("trial-tmp")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory, trial_tmp):
    ray.init(num_cpus=2, log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"env_vars": {"TMPDIR": str(trial_tmp)}})
    yield
    ray.shutdown()


def study_runs(out):
    client = MlflowClient(default_tracking_uri(out))
    exp = client.get_experiment_by_name("hardtruths")
    parent = client.search_runs([exp.experiment_id], "tags.`hardtruths.kind` = 'study'")[0]
    return client, exp, parent


def children(client, exp, parent, order_by=None):
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                              order_by=order_by)


def age(client, exp, parent, out, version="0ld"):
    """Make every finished trial look as if older code trained it, in MLflow and in results.csv."""
    for run in children(client, exp, parent):
        client.set_tag(run.info.run_id, "code_version", version)
    results = pd.read_csv(out / "results.csv")
    results["code_version"] = version
    results.to_csv(out / "results.csv", index=False)


def test_runs_carry_provenance_sort_numerically_and_stale_trials_need_a_choice(local_ray, tmp_path, cache_dir,
                                                                              trial_tmp, capsys):
    out = tmp_path / "study"
    argv = ARGS + ["--out", str(out), "--cache-dir", str(cache_dir)]
    assert main(argv) == 0
    client, exp, parent = study_runs(out)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = children(client, exp, parent)
    assert len(runs) == 3  # IPC 2 and 10, plus the full-data reference (IPC 0)
    for run in [parent, *runs]:
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "study.scaling" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and tags["mlflow.user"] != "unknown"
        assert len(tags["mlflow.source.git.commit"]) == 40, "the tests run from a git checkout"
    assert {r.data.tags["code_version"] for r in runs} == {code_version()}
    for run in runs:  # the live run opens when Tune starts the trial and closes when the trial's own clock stops
        span = (run.info.end_time - run.info.start_time) / 1000
        wall = run.data.metrics["wall_seconds"]
        assert wall - 0.01 <= span <= wall + 10, (run.info.run_name, span, wall)

    by_metric = [r.data.tags["ipc"] for r in children(client, exp, parent, ["metrics.ipc ASC"])]
    by_tag = [r.data.tags["ipc"] for r in children(client, exp, parent, ["tags.ipc ASC"])]
    assert by_metric == ["0", "2", "10"], "ipc as a metric sorts as a number"
    assert by_tag == ["0", "10", "2"], "the string tag alone would not"
    assert {r.data.metrics["steps"] for r in runs} == {20.0}

    inputs = {r.data.tags["ipc"]: {i.tags[0].value: i.dataset for i in r.inputs.dataset_inputs} for r in runs}
    assert {ipc: sorted(d) for ipc, d in inputs.items()} == {ipc: ["source", "training"] for ipc in ("0", "2", "10")}
    assert {d["source"].name for d in inputs.values()} == {"digits"}
    assert len({d["source"].digest for d in inputs.values()}) == 1, "one data set under every trial"
    assert inputs["2"]["training"].name == "digits random ipc=2"
    assert len({d["training"].digest for d in inputs.values()}) == 3, "each trial trained on its own selection"
    assert json.loads(inputs["10"]["training"].profile)["images_per_seed"] == 100
    assert json.loads(inputs["0"]["source"].profile) == {"train_images": 1299, "classes": 10}
    assert ray.get(ray.remote(tempfile.gettempdir).remote()) == str(trial_tmp), "the workers' TMPDIR is watched"
    assert not list(trial_tmp.glob("hardtruths-trial-*")), "every trial removed its temporary folder"

    cell = next(r for r in runs if r.data.tags["ipc"] == "10")
    config = client.download_artifacts(cell.info.run_id, "config.json", str(tmp_path))
    from study.run import main as run_main

    capsys.readouterr()
    run_main(["--config", config, "--json", "--cache-dir", str(cache_dir), "--device", "cpu"])
    again = json.loads(capsys.readouterr().out)
    assert again["hash"] == cell.data.tags["config_hash"], "study.run --config reruns the study's cell"
    assert again["test_acc_seed0"] == pytest.approx(cell.data.metrics["test_acc_seed0"], abs=1e-9)

    age(client, exp, parent, out)
    capsys.readouterr()
    assert main(argv + ["--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "total: 3 trials, 3 already finished (3 of them under older code: the run needs --stale reuse" in said
    assert f"output folder: {out}\n" in said
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "3 finished trial(s) of this study came from an older version of the code" in err
    assert "--stale reuse" in err and "--stale rerun" in err
    assert len(children(client, exp, parent)) == 3 and client.get_run(parent.info.run_id).info.status == "FINISHED"

    assert main(argv + ["--stale", "reuse"]) == 0
    said = capsys.readouterr().out
    assert "3 cell(s) in the study, 3 already finished (3 of them under older code, reused: --stale reuse)" in said
    assert {r.data.tags["code_version"] for r in children(client, exp, parent)} == {"0ld"}

    assert main(argv + ["--stale", "rerun"]) == 0
    said = capsys.readouterr().out
    assert "3 cell(s) in the study, 0 already finished; 3 that finished under older code run again" in said
    rerun = children(client, exp, parent)
    assert len(rerun) == 3 and {r.data.tags["code_version"] for r in rerun} == {code_version()}
    assert {r.data.tags["config_hash"] for r in rerun} == {r.data.tags["config_hash"] for r in runs}
    from mlflow.entities import ViewType

    retired = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                 run_view_type=ViewType.DELETED_ONLY)
    assert len(retired) == 3 and all(r.data.tags["hardtruths.retired"].startswith("run again") for r in retired)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 3 and set(results["code_version"]) == {code_version()}

    assert main(argv + ["--dry-run"]) == 0
    assert "total: 3 trials, 3 already finished\n" in capsys.readouterr().out


def test_git_dirty_says_whether_the_tree_has_uncommitted_changes(tmp_path):
    assert git_dirty(tmp_path) is None, "not a git checkout"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    assert git_dirty(tmp_path) is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True
    subprocess.run(git + ["checkout", "-q", "a.py"], check=True)
    (tmp_path / "new.py").write_text("")
    assert git_dirty(tmp_path) is True, "an untracked file is a change too"
    assert source_tags.__wrapped__("test")[GIT_DIRTY] == str(git_dirty()).lower()
