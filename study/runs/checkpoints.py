"""No finished trial is lost to a killed driver or an MLflow outage: its Tune checkpoint is read back.

Every finished trial's record and artifacts already lie in the folder that Tune
(or Ray Train) persisted as its checkpoint under the study's storage folder,
before the driver is told the trial finished. The driver writes the record
to results.csv, then to MLflow (study.runs.sink); if MLflow cannot take it,
or the driver dies first, :func:`replay` finds it in its checkpoint on the next
pass and logs it. A trial that failed has no checkpoint; results.csv keeps its
failure and the cell runs again.

MLflow itself is reached only through the tracker (study.runs.tracking).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from study.runs.record import RECORD_FILE, read_complete
from study.runs.results_table import ResultsTable


def checkpointed(storage: Path) -> dict[str, tuple[dict, Path]]:
    """Config hash -> (record, folder) of every finished trial whose checkpoint under ``storage`` is complete;
    of several checkpoints of one trial (a retried or rerun cell), the latest."""
    found: dict[str, tuple[dict, Path, float]] = {}
    for path in Path(storage).rglob(RECORD_FILE) if Path(storage).exists() else []:
        record = read_complete(path.parent)
        if record is None or record.get("status") != "FINISHED":
            continue
        when = path.stat().st_mtime
        if record["config_hash"] not in found or when >= found[record["config_hash"]][2]:
            found[record["config_hash"]] = (record, path.parent, when)
    return {h: (record, folder) for h, (record, folder, _) in found.items()}


def replay(tracker, parent_id: str, storage: Path, results: ResultsTable, cells: Iterable[str] | None = None,
           say: Callable[[str], None] | None = None) -> int:
    """Log to MLflow every finished trial in a checkpoint under ``storage`` that MLflow does not have, first
    deleting any run a cut-off log left RUNNING for it, and add to ``results`` every one it lacks. ``cells``
    (config hashes) limits this to one study's trials when several studies share the folder: a trial belongs
    if its own hash or its search group's is one of them. A trial logged in full and then deleted from MLflow
    is left alone. Returns how many trials were logged."""
    records = checkpointed(storage)
    if cells is not None:
        wanted = set(cells)
        records = {h: (r, f) for h, (r, f) in records.items()
                   if h in wanted or r.get("tags", {}).get("search_group") in wanted}
    if not records:
        return 0
    present = tracker.finished_hashes(parent_id)
    deleted = tracker.deleted_hashes(parent_id) - present
    known, logged = results.finished_hashes(), 0
    for config_hash, (record, folder) in sorted(records.items()):
        if config_hash in deleted:
            continue
        if config_hash not in known:
            results.add(record)
        if config_hash in present:
            continue
        tracker.drop_unfinished(parent_id, config_hash)
        tracker.log_trial(parent_id, record, folder)
        logged += 1
    if logged and say is not None:
        say(f"logged {logged} trial(s) that finished while MLflow was unreachable or the study was stopped")
    return logged
