"""The study's results table on disk: results.csv, one row per trial (summarised by :mod:`study.analysis`).

Rows are kept in memory and the whole file is rewritten atomically after each
trial, so a killed driver leaves either the previous or the new file, never a
truncated one. On a rerun the table is read back and merged with MLflow, so
finished trials are found even if one of the two was lost.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from study.core.cache import atomic_write_text
from study.runs.provenance import UNKNOWN
from study.runs.record import flatten


class ResultsTable:
    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / "results.csv"
        self.rows: dict[str, dict] = {}
        if self.path.exists() and self.path.stat().st_size:
            for row in pd.read_csv(self.path).to_dict("records"):
                self.rows[str(row["config_hash"])] = row

    def finished_hashes(self) -> set[str]:
        return {h for h, r in self.rows.items() if r.get("status") == "FINISHED"}

    def finished_versions(self, cells: set[str]) -> dict[str, str]:
        """Config hash -> code version of the finished trials of a study whose cells (or search groups) are
        ``cells``; rows written before trials carried a code version have :data:`UNKNOWN`."""
        return {h: version_of(r) for h, r in self.rows.items()
                if r.get("status") == "FINISHED" and (h in cells or r.get("search_group") in cells)}

    def drop(self, hashes: set[str]) -> None:
        """Forget trials that run again."""
        for h in hashes:
            self.rows.pop(h, None)
        atomic_write_text(self.path, self.frame().to_csv(index=False))

    def add(self, record: dict) -> None:
        row = {**flatten(record["config"]), "config_hash": record["config_hash"], "status": record["status"],
               **record.get("metrics", {}), **record.get("tags", {}), "error": record.get("error", "")}
        self.rows[record["config_hash"]] = row
        atomic_write_text(self.path, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.rows.values()))


def version_of(row: dict) -> str:
    version = row.get("code_version")
    return str(version) if isinstance(version, str) and version else UNKNOWN
