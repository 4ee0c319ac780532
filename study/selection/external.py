"""``external:PATH``: a distilled or selected set made elsewhere, evaluated exactly like the harness's own.

PATH is a ``.pt`` file, a ``.npz`` file or an ImageFolder tree (one sub-folder
per class), read and checked by :mod:`study.selection.external_formats` when
the selection is made, before any student trains. The set is the same for
every seed of a trial.

Traceability: the content hash of the set is computed when the selector is
built. It is part of the selector's resolved parameters and so of the
selection's cache key, of its provenance (``content_hash``), and :func:`study.runs.record.success_record` copies
it into the trial's recorded ``selector_params.content_hash`` (an MLflow
param). Passing ``content_hash=`` pins it: the selector then refuses a file
whose bytes differ, so a recorded config reruns on the same set or not at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from study.core.errors import StudyError
from study.selection.base import Selection, SelectionContext, Selector, register_selector
from study.selection.external_formats import (
    LAYOUTS, VALUE_RANGES, compute_content_hash, hash_scheme, load_external, read_card,
)


@register_selector("external")
class ExternalSelector(Selector):
    """``external:PATH`` with optional ``resize``, ``value_range``, ``layout`` and ``content_hash`` parameters."""

    family = "dd"  # or the family its card records

    @dataclass(frozen=True)
    class Params(Selector.Params):
        arg: str = ""  # the PATH of external:PATH
        resize: bool = False
        value_range: str = "auto"
        layout: str = "auto"
        content_hash: str | None = None  # pinned: a file whose bytes differ is refused

        def check(self) -> None:
            if not self.arg:
                raise StudyError("The external selector needs a path: external:PATH to a .pt / .npz file or an "
                                 "ImageFolder tree.")
            if self.value_range not in VALUE_RANGES:
                raise StudyError(f"value_range must be one of {', '.join(VALUE_RANGES)}, not {self.value_range!r}.")
            if self.layout not in LAYOUTS:
                raise StudyError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}.")

    def __init__(self, **params):
        super().__init__(**params)
        self.path = Path(self.p.arg).expanduser()
        if not self.path.exists():
            raise StudyError(f"external:{self.p.arg} does not exist; give a .pt or .npz file or an ImageFolder tree.")
        self.content_hash = compute_content_hash(self.path)
        pinned = self.p.content_hash
        if pinned is not None and pinned != self.content_hash:
            raise StudyError(f"{self.path} has changed since its hash was pinned: its content hash is "
                             f"{self.content_hash[:16]}..., not {str(pinned)[:16]}...")
        self.params["content_hash"] = self.content_hash  # resolved: the bytes are what the selection depends on
        self.card = read_card(self.path)
        card_family = (self.card or {}).get("family")
        self.family = card_family if card_family in ("coreset", "dd") else type(self).family

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        p = self.p
        images, labels, found = load_external(self.path, ctx.data, ipc, p.resize, p.value_range, p.layout)
        source = {k: self.card[k] for k in ("dataset", "selector", "params", "ipc", "seed") if k in (self.card or {})}
        return Selection(images, labels, None, self.provenance(
            ipc, seed, path=str(self.path.resolve()), content_hash=self.content_hash,
            hash_scheme=hash_scheme(self.path), family=self.family,
            source=source or None, **found))
