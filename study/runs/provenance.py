"""Which code produced a trial: the version of the code that computes its numbers, recorded on every trial.

A rerun skips finished trials by config hash; the config says nothing of the
code that trained them. The code version (study.core.sources) covers one
trial start to finish and every project module it imports: the training core,
the selectors, the config. A change to what runs there marks older trials as
stale; a comment or docstring, or a change to reports, tracking or the command
line, does not. Trials recorded before this version was an AST digest (when it
hashed raw bytes) read as stale once.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from study.core import sources

PROJECT = sources.PROJECT
TRIAL_CODE = ["study.runs.trial"]
UNKNOWN = "unknown"  # trials recorded before code versions were


def code_version() -> str:
    """16 hex digits over the code of :data:`TRIAL_CODE` and everything it imports."""
    return sources.code_version(TRIAL_CODE)


def git_dirty(tree: Path = PROJECT) -> bool | None:
    """Whether ``tree`` is a git checkout with changes not committed (untracked files included): its commit
    alone then does not say which code ran. None outside a git checkout, or without git."""
    try:
        status = subprocess.run(["git", "-C", str(tree), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(status.stdout.strip()) if status.returncode == 0 else None
