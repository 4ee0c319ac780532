"""Which code produced a trial: a version of the sources that compute its numbers, recorded on every trial.

A rerun skips finished trials by config hash; the config says nothing of the
code that trained them. The code version is a hash of the sources a trial's
numbers depend on (the training core, the selectors, one trial start to
finish, the config), so a fix anywhere there marks older trials as stale,
while a change to reports, tracking or the command line does not.
"""
from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
RESULT_SOURCES = ("study/core", "study/selection", "study/runs/trial.py", "study/runs/config.py")
UNKNOWN = "unknown"  # trials recorded before code versions were


def source_files() -> list[Path]:
    files = []
    for name in RESULT_SOURCES:
        path = PROJECT / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


@lru_cache(maxsize=1)
def code_version() -> str:
    """16 hex digits over the path and bytes of every file in :data:`RESULT_SOURCES`."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.relative_to(PROJECT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def git_dirty(tree: Path = PROJECT) -> bool | None:
    """Whether ``tree`` is a git checkout with changes not committed (untracked files included): its commit
    alone then does not say which code ran. None outside a git checkout, or without git."""
    try:
        status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(status.stdout.strip()) if status.returncode == 0 else None
