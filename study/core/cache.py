"""Content-addressed cache for expensive preparation (teachers, scores, selections).

Entries are keyed by a hash of everything that determines them, written
atomically (temporary file, then rename) with a SHA-256 of their bytes beside
them. A file whose bytes no longer match is reported in one line and
recomputed, so a kill during a write can never leave a truncated entry that is
later trusted. Computing an entry holds an exclusive lock on ``<hash>.lock``,
so processes that need the same entry at once (two preparation tasks sharing a
proxy, say) compute it once: the others wait, then read it.

Every entry also names the code that computes it (``code``: module names,
study.core.sources): the version of those modules and of all they import is
part of its key, so a change to that code makes the entry anew and a change
elsewhere (a comment, another selector) keeps it. A call site states the scope
once, usually as ``code=[__name__]`` or a constant shared by every site that
reads or writes the same entries.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from study.core.seeding import canonical_json, content_hash
from study.core.sources import code_version

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path(os.environ.get("HARDTRUTHS_CACHE", Path.home() / ".cache" / "hardtruths"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


Code = Iterable[str]  # the project modules that compute an entry


class Cache:
    """A folder of ``<kind>/<hash>.pt`` payloads with ``<hash>.json`` sidecars. ``code_root`` is the checkout
    whose sources version the entries (this one unless a test hashes an edited copy)."""

    def __init__(self, root: str | Path | None = None, code_root: str | Path | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.code_root = code_root

    def full_key(self, key: dict, code: Code) -> dict:
        """``key`` with the version of the code that computes the entry."""
        modules = sorted(set(code))
        return {**key, "code": {"modules": modules, "version": code_version(modules, self.code_root)}}

    def paths(self, kind: str, key: dict, code: Code) -> tuple[Path, Path]:
        h = content_hash(self.full_key(key, code), length=24)
        folder = self.root / kind
        return folder / f"{h}.pt", folder / f"{h}.json"

    def load(self, kind: str, key: dict, *, code: Code, warn: bool = True) -> Any | None:
        payload, sidecar = self.paths(kind, key, code)
        if not (payload.exists() and sidecar.exists()):
            return None
        data = payload.read_bytes()
        try:
            expected = json.loads(sidecar.read_text()).get("sha256")
        except (ValueError, AttributeError):  # a damaged sidecar is a damaged entry, not a crash
            expected = None
        if hashlib.sha256(data).hexdigest() != expected:
            if warn:
                log.warning("Cache entry %s does not match its recorded hash; recomputing it.", payload)
            return None
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    def store(self, kind: str, key: dict, value: Any, *, code: Code) -> Path:
        payload, sidecar = self.paths(kind, key, code)
        buf = io.BytesIO()
        torch.save(value, buf)
        data = buf.getvalue()
        atomic_write_bytes(payload, data)
        meta = {"key": json.loads(canonical_json(self.full_key(key, code))), "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_text(sidecar, json.dumps(meta, indent=1))
        return payload

    @contextlib.contextmanager
    def computing(self, kind: str, key: dict, code: Code):
        """Hold the entry's lock (a POSIX advisory lock, released when the process dies)."""
        payload, _ = self.paths(kind, key, code)
        payload.parent.mkdir(parents=True, exist_ok=True)
        with open(payload.with_suffix(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], Any], *, code: Code) -> Any:
        """The entry (``kind``, ``key``) made by the modules ``code``: read, or computed and stored."""
        value = self.load(kind, key, code=code)
        if value is not None:
            return value
        with self.computing(kind, key, code):
            value = self.load(kind, key, code=code, warn=False)  # whoever held the lock first may have made it
            if value is None:
                value = compute()
                self.store(kind, key, value, code=code)
        return value

    def folder(self, kind: str, key: dict, fill: Callable[[Path], None], *, code: Code) -> Path:
        """A folder of files (a pass's Parquet parts) made once by ``fill``; its sidecar, written last with each
        file's size, marks it complete, so a folder left by a killed pass, or one whose files changed, is made
        again rather than read."""
        payload, sidecar = self.paths(kind, key, code)
        folder = payload.with_suffix("")
        if self.folder_intact(folder, sidecar):
            return folder
        with self.computing(kind, key, code):
            if not self.folder_intact(folder, sidecar):
                shutil.rmtree(folder, ignore_errors=True)
                fill(folder)
                sizes = {f.name: f.stat().st_size for f in sorted(folder.iterdir())}
                meta = {"key": json.loads(canonical_json(self.full_key(key, code))), "files": sizes}
                atomic_write_text(sidecar, json.dumps(meta, indent=1))
        return folder

    def has_folder(self, kind: str, key: dict, *, code: Code) -> bool:
        payload, sidecar = self.paths(kind, key, code)
        return self.folder_intact(payload.with_suffix(""), sidecar)

    @staticmethod
    def folder_intact(folder: Path, sidecar: Path) -> bool:
        if not (folder.is_dir() and sidecar.exists()):
            return False
        try:
            recorded = json.loads(sidecar.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return False
        present = {f.name: f.stat().st_size for f in folder.iterdir()}
        if present != recorded:
            log.warning("Cache folder %s does not match its record; recomputing it.", folder)
            return False
        return True
