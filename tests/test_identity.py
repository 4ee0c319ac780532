"""What identifies a result: the one resolver behind every command, and code versions scoped to what computes.

Code versions are checked on copies of the package in tmp_path (never by editing this checkout): a
comment-only edit keeps them, a change to the training loop changes them and a cached selection is made
anew, an edit to one selector leaves the teacher's cache entry in use.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from study.core.cache import Cache
from study.core.sources import code_version
from study.core.teacher import CODE as TEACHER_CODE, TeacherSpec, get_teacher
from study.runs.config import TrialConfig
from study.runs.provenance import TRIAL_CODE
from study.selection import SelectionContext, build_selector
from study.selection.external_formats import compute_content_hash

ROOT = Path(__file__).resolve().parents[1]
TRAIN_LOOP_LINE = "    eval_every = max(1, protocol.steps // max(1, eval_points))\n"


def package_copy(tmp_path: Path, name: str, edit=None) -> Path:
    """A copy of study/ under tmp_path/name, with ``edit(root)`` applied to it."""
    root = tmp_path / name
    shutil.copytree(ROOT / "study", root / "study", ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        edit(root)
    return root


def rewrite(root: Path, module: str, old: str, new: str) -> None:
    path = root / module
    text = path.read_text()
    assert old in text, (module, old)
    path.write_text(text.replace(old, new, 1))


def comments_only(root: Path) -> None:
    """Comments, a docstring and line layout change in the training loop; nothing that runs."""
    rewrite(root, "study/core/train.py", TRAIN_LOOP_LINE,
            "    # how often to evaluate, now with a comment\n    eval_every = max(1,\n"
            "                     protocol.steps // max(1, eval_points))  # wrapped\n")
    rewrite(root, "study/core/train.py", '"""The training loop, for one student', '"""The training loop (reworded), for one student')


def training_loop_changed(root: Path) -> None:
    rewrite(root, "study/core/train.py", TRAIN_LOOP_LINE,
            "    eval_every = max(2, protocol.steps // max(1, eval_points))\n")


def dm_changed(root: Path) -> None:
    rewrite(root, "study/selection/dm.py", "iterations: int = 500", "iterations: int = 400")


def test_a_comment_only_edit_keeps_the_code_version_and_a_loop_change_does_not(tmp_path):
    here = code_version(TRIAL_CODE)
    assert code_version(TRIAL_CODE, package_copy(tmp_path, "same")) == here
    assert code_version(TRIAL_CODE, package_copy(tmp_path, "comments", comments_only)) == here
    assert code_version(TRIAL_CODE, package_copy(tmp_path, "loop", training_loop_changed)) != here


def test_a_training_loop_change_recomputes_a_cached_selection(tmp_path, digits):
    """Selections are keyed by their selector's code and all it imports (the training loop, through the
    teacher it may read): served again after a comment edit, made anew after a change to the loop."""
    store = tmp_path / "cache"
    cfg = TrialConfig.from_dict({"selector": "random", "ipc": 2})
    from study.runs.trial import get_selection

    def entries_after(root: Path) -> int:
        ctx = SelectionContext(digits, Cache(store, code_root=root), "cpu", cfg.protocol)
        get_selection(ctx, build_selector("random"), cfg, 0)
        return len(list((store / "selections").glob("*.pt")))

    assert entries_after(package_copy(tmp_path, "before")) == 1
    assert entries_after(package_copy(tmp_path, "comments", comments_only)) == 1, "a comment made it anew"
    assert entries_after(package_copy(tmp_path, "loop", training_loop_changed)) == 2, "the stale entry was served"


def test_an_edit_to_one_selector_keeps_the_teacher(tmp_path, digits):
    before, after = package_copy(tmp_path, "before"), package_copy(tmp_path, "dm", dm_changed)
    assert code_version(TEACHER_CODE, after) == code_version(TEACHER_CODE, before)
    assert code_version(["study.selection.dm"], after) != code_version(["study.selection.dm"], before)
    assert code_version(["study.selection.geometry"], after) == code_version(["study.selection.geometry"], before)
    assert code_version(TRIAL_CODE, after) != code_version(TRIAL_CODE, before)  # the trials that ran dm are stale
    store, spec = tmp_path / "cache", TeacherSpec(model_kwargs={"width": 8}, epochs=1)
    first = get_teacher(digits, spec, Cache(store, code_root=before), device="cpu")
    again = get_teacher(digits, spec, Cache(store, code_root=after), device="cpu")
    assert len(list((store / "teachers").glob("*.pt"))) == 1 and again.test_acc == first.test_acc


# ---- one resolver: the study's cell, study.run and study.export agree ---------------------------------------------

CELL = ["--ipc", "2", "--set", "teacher.epochs=2"]


def test_export_makes_the_set_the_study_trains_on(tmp_path, digits):
    """The same content hash from study.export (its own cache, so made again) as from the study's trial of the
    cell; before the one resolver, export keyed herding on a width-64 teacher while the digits preset's is 32."""
    from study.export import main as export_main, write_set
    from study.runs.trial import run_trial
    from study.scaling import parse, spec_from_args

    spec = spec_from_args(parse(["--selectors", "herding", "--regimes", "hl", "--budgets", "20", "--seeds", "1",
                                 *CELL]))
    (cell,) = [c for c in spec.cells() if c.selector == "herding"]
    trained = run_trial(cell, tmp_path / "study-cache", "cpu").selections[0]
    write_set(trained.images, trained.labels, digits.classes, tmp_path / "trial.pt")

    export_main(["--selector", "herding", "--steps", "20", *CELL, "--out", str(tmp_path / "export.pt"),
                 "--cache-dir", str(tmp_path / "export-cache")])
    card = json.loads((tmp_path / "export.json").read_text())
    assert card["content_hash"] == compute_content_hash(tmp_path / "trial.pt")
    assert card["indices"] == trained.indices.tolist() and card["teacher"] == cell.teacher.to_dict()


@pytest.mark.parametrize("command", ["run", "export"])
def test_a_single_trial_resolves_as_the_study_cell(command):
    from study.scaling import parse, spec_from_args

    module = __import__(f"study.{command}", fromlist=["config_from_args"])
    flags = ["--selector", "dm", "--ipc", "2", "--regime", "sl_kd", "--steps", "30", "--set", "temperature=2",
             "--set", "selector_params.dm.iterations=5"]
    single = module.config_from_args(module.parse(flags))
    spec = spec_from_args(parse(["--selectors", "dm", "--ipc", "2", "--regimes", "sl_kd", "--budgets", "30",
                                 "--seeds", "1", "--set", "temperature=2", "--set", "selector_params.dm.iterations=5"]))
    (cell,) = [c for c in spec.cells() if c.selector == "dm"]
    assert single.hash == cell.hash and single.selector_params == {"iterations": 5}


@pytest.mark.parametrize("command, args", [
    ("run", ["--selector", "aum", "--ipc", "3", "--set", "selector_params.aum.keep=easy"]),
    ("export", ["--selector", "aum", "--ipc", "3", "--params", '{"keep": "easy"}']),
    ("scaling", ["--space", "smoke", "--set", "model_kwargs.width=8"]),
])
def test_every_command_prints_its_config_and_takes_it_back(command, args, tmp_path, capsys):
    main = __import__(f"study.{command}", fromlist=["main"]).main
    assert main([*args, "--print-config"]) in (None, 0)
    printed = capsys.readouterr().out
    (tmp_path / "config.json").write_text(printed)
    assert main(["--config", str(tmp_path / "config.json"), "--print-config"]) in (None, 0)
    assert json.loads(capsys.readouterr().out) == json.loads(printed)


def test_bad_set_is_refused_the_same_way_by_every_command(capsys):
    for command, flag in (("run", "--selector"), ("export", "--selector"), ("scaling", "--selectors")):
        main = __import__(f"study.{command}", fromlist=["main"]).main
        with pytest.raises(SystemExit) as exit_:
            main([flag, "random", "--set", "selector_params.dm.iterations=5", "--print-config"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: Parameters were set for the selector 'dm', which does not run here"), command


# A config.json as trials recorded it before t2_scale, precision and the teacher's seed, path and recipe existed.
OLD_CONFIG = {"dataset": "digits", "selector": "random", "selector_params": {}, "ipc": 5, "seeds": 2,
              "data_root": None, "model": "convnet", "model_kwargs": {"width": 32}, "regime": "hl", "steps": 50,
              "batch_size": 64, "recipe": "adamw-v1", "lr": None, "temperature": 4.0, "cutmix_prob": 0.0,
              "teacher": {"model": "convnet", "model_kwargs": {"width": 64}, "epochs": 50}}


@pytest.mark.parametrize("wrapped", [False, True], ids=["config.json", "record.json"])
def test_an_old_config_json_still_loads(wrapped, tmp_path, capsys):
    from study.export import main as export_main
    from study.run import main as run_main

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config": OLD_CONFIG, "status": "FINISHED"} if wrapped else OLD_CONFIG))
    for main in (run_main, export_main):
        main(["--config", str(path), "--print-config"])
        loaded = TrialConfig.from_dict(json.loads(capsys.readouterr().out))
        assert loaded == TrialConfig.from_dict(OLD_CONFIG)
        assert (loaded.protocol.precision, loaded.protocol.t2_scale, loaded.teacher.seed) == ("auto", True, 0)
