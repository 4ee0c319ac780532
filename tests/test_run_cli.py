"""``python -m study.run``: one number for one trial; user mistakes are one line on stderr and exit code 2."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cache_dir, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "study.run", *args, "--cache-dir", str(cache_dir), "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_prints_an_accuracy_line(tmp_path):
    proc = run_cli("--dataset", "digits", "--selector", "random", "--ipc", "10", "--regime", "hl", "--steps", "100",
                   cache_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    m = re.fullmatch(r"random ipc=10 hl steps=100: test accuracy (\d+\.\d) % over 1 seed\(s\), \d+\.\d s", lines[0])
    assert m, lines[0]
    assert 60.0 < float(m.group(1)) <= 100.0  # 100 images, 100 steps: well above chance (10%)


def test_unknown_selector_exits_2_with_one_line_and_no_traceback(tmp_path):
    proc = run_cli("--selector", "bogus", cache_dir=tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'bogus'" in err[0] and "random" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# The same entry point in-process (same friendly_errors path, without paying a Python start-up per case).

@pytest.mark.parametrize("args, says", [
    (["--regime", "soft"], "sl_kd"),
    (["--dataset", "imagenet-9000"], "fashion-mnist"),
    (["--model", "vgg"], "convnet"),
    (["--recipe", "lamb"], "adamw-v1"),
    (["--steps", "0"], "positive"),
    (["--ipc", "0"], "IPC"),
])
def test_user_mistakes_exit_2_with_one_line(capsys, tmp_path, args, says):
    from study.run import main

    with pytest.raises(SystemExit) as exit_:
        main([*args, "--cache-dir", str(tmp_path), "--device", "cpu"])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err
    assert out == ""


def test_json_output_carries_config_and_budget(capsys, tmp_path):
    from study.run import main

    main(["--selector", "random", "--ipc", "2", "--steps", "5", "--batch-size", "16", "--seeds", "2", "--json",
          "--cache-dir", str(tmp_path), "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["ipc"] == 2 and out["config"]["steps"] == 5 and len(out["hash"]) == 16
    assert out["samples_seen"] == 80 and out["train_size"] == 20
    assert out["epochs_equivalent"] == pytest.approx(80 / 1299)
    assert 0.0 <= out["test_acc_seed0"] <= 1.0 and "test_acc_seed1" in out
