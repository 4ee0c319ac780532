"""A trial's record on disk, and the flat form of its config that MLflow params and results.csv columns use.

The trainable writes ``record.json`` into the folder that becomes the trial's
Tune checkpoint. Ray copies that folder into the study's storage file by file,
in no set order, so a copy cut off by a kill can hold a record without all
of its artifacts, or a truncated record. The record therefore lists the other
files of its folder with their sizes, and :func:`read_complete` trusts a
folder only when every one of them is there in full.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from study.core.cache import atomic_write_text

RECORD_FILE = "record.json"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'teacher': {'epochs': 5}} -> {'teacher.epochs': 5}: every config field becomes one MLflow param."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def write_record(folder: Path, record: dict) -> Path:
    """Write ``record`` last into ``folder``, listing the files already there (name: bytes)."""
    files = {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())
             if p.is_file() and p.name != RECORD_FILE}
    atomic_write_text(Path(folder) / RECORD_FILE, json.dumps({**record, "files": files}, default=str))
    return Path(folder)


def read_record(folder: Path) -> dict:
    return json.loads((Path(folder) / RECORD_FILE).read_text())


def read_complete(folder: Path) -> dict | None:
    """The record of ``folder``, or None when the record or any file it lists is missing or cut short."""
    try:
        record = read_record(folder)
    except (OSError, ValueError):
        return None
    for name, size in record.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return record
