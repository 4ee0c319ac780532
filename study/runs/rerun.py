"""What a rerun skips: the trials a study already finished, and the policy for those finished under older code.

A rerun skips finished trials by config hash. When the code that computes
results has changed since (study.runs.provenance), reusing them is a choice
the user states (``--stale reuse``) or declines (``--stale rerun``); a rerun
that meets such trials without a choice stops before anything runs and says
how many there are.
"""
from __future__ import annotations

from study.core.errors import StudyError
from study.runs.results_table import ResultsTable
from study.runs.provenance import code_version

STALE_POLICIES = ("reuse", "rerun")


def finished_versions(cells: set[str], results: ResultsTable, tracker=None,
                      parent_id: str | None = None) -> dict[str, str]:
    """Config hash -> code version of every finished trial of the study, from results.csv and (when the study
    has a parent run) MLflow; MLflow's tag wins where both know a trial."""
    versions = results.finished_versions(cells)
    if tracker is not None and parent_id is not None:
        versions.update(tracker.finished_versions(parent_id))
    return versions


def stale_hashes(versions: dict[str, str]) -> set[str]:
    current = code_version()
    return {h for h, v in versions.items() if v != current}


def check_stale(stale: int, policy: str | None) -> None:
    """Refuse to go on silently over trials from older code."""
    if policy is not None and policy not in STALE_POLICIES:
        raise StudyError(f"--stale must be one of {', '.join(STALE_POLICIES)}, not {policy!r}.")
    if stale and policy is None:
        raise StudyError(f"{stale} finished trial(s) of this study came from an older version of the code (now "
                         f"{code_version()}); pass --stale reuse to keep their results, or --stale rerun to train "
                         f"them again.")


def describe(finished: int, stale: int, policy: str | None) -> str:
    """``N already finished``, plus what happens to the trials that finished under older code."""
    if not stale:
        return f"{finished} already finished"
    if policy == "rerun":
        return f"{finished} already finished; {stale} that finished under older code run again (--stale rerun)"
    if policy == "reuse":
        return f"{finished} already finished ({stale} of them under older code, reused: --stale reuse)"
    return (f"{finished} already finished ({stale} of them under older code: the run needs --stale reuse "
            f"or --stale rerun)")
