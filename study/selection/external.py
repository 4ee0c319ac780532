"""``external:PATH``: a distilled or selected set made elsewhere, evaluated exactly like the harness's own.

PATH is a ``.pt`` file, a ``.npz`` file or an ImageFolder tree (one sub-folder
per class), read and checked by :mod:`study.selection.external_formats` when
the selection is made, before any student trains. The set is the same for
every seed of a trial (``stochastic = False``).

Traceability: the content hash of the set is computed when the selector is
built. It is part of the selection's cache key (``identity``), of its
provenance (``content_hash``), and :func:`study.runs.outcome.success_record` copies
it into the trial's recorded ``selector_params.content_hash`` (an MLflow
param). Passing ``content_hash=`` pins it: the selector then refuses a file
whose bytes differ, so a recorded config reruns on the same set or not at all.
"""
from __future__ import annotations

from pathlib import Path

from study.core.errors import StudyError
from study.selection.base import Selection, SelectionContext, Selector, register_selector
from study.selection.external_formats import (
    LAYOUTS, VALUE_RANGES, compute_content_hash, hash_scheme, load_external, read_card,
)


@register_selector("external")
class ExternalSelector(Selector):
    """``external:PATH`` with optional ``resize``, ``value_range``, ``layout`` and ``content_hash`` parameters."""

    family = "dd"
    stochastic = False

    def __init__(self, arg: str = "", resize: bool = False, value_range: str = "auto", layout: str = "auto",
                 content_hash: str | None = None):
        if not arg:
            raise StudyError("The external selector needs a path: external:PATH to a .pt / .npz file or an "
                             "ImageFolder tree.")
        if value_range not in VALUE_RANGES:
            raise StudyError(f"value_range must be one of {', '.join(VALUE_RANGES)}, not {value_range!r}.")
        if layout not in LAYOUTS:
            raise StudyError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}.")
        given = {"resize": resize or None, "value_range": None if value_range == "auto" else value_range,
                 "layout": None if layout == "auto" else layout, "content_hash": content_hash}
        super().__init__(arg=arg, **{k: v for k, v in given.items() if v is not None})
        self.path = Path(arg).expanduser()
        self.resize, self.value_range, self.layout = bool(resize), value_range, layout
        if not self.path.exists():
            raise StudyError(f"external:{arg} does not exist; give a .pt or .npz file or an ImageFolder tree.")
        self.content_hash = compute_content_hash(self.path)
        if content_hash is not None and content_hash != self.content_hash:
            raise StudyError(f"{self.path} has changed since its hash was pinned: its content hash is "
                             f"{self.content_hash[:16]}..., not {str(content_hash)[:16]}...")
        self.card = read_card(self.path)
        card_family = (self.card or {}).get("family")
        self.family = card_family if card_family in ("coreset", "dd") else type(self).family

    @property
    def identity(self) -> dict:
        """What the selection depends on beyond the name and parameters: the bytes of the set."""
        return {"content_hash": self.content_hash}

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        images, labels, found = load_external(self.path, ctx.data, ipc, self.resize, self.value_range, self.layout)
        source = {k: self.card[k] for k in ("dataset", "selector", "params", "ipc", "seed") if k in (self.card or {})}
        return Selection(images, labels, None, self.provenance(
            ipc, seed, path=str(self.path.resolve()), content_hash=self.content_hash,
            hash_scheme=hash_scheme(self.path), family=self.family,
            source=source or None, **found))
