"""The control every study needs: class-balanced uniform sampling, and the full training set."""
from __future__ import annotations

import numpy as np

from study.selection.base import Selection, SelectionContext, Selector, from_indices, register_selector


@register_selector("random")
class RandomSelector(Selector):
    def choose(self, ctx, members, ipc, rng):
        return rng.choice(members, size=ipc, replace=False)


@register_selector("full")
class FullData(Selector):
    """The reference cell: the whole training split, whatever the IPC."""

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        return from_indices(ctx, np.arange(len(ctx.data.train_y)), self.provenance(ipc, seed))
