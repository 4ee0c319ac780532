"""A window of one fixed difficulty axis, sampled stratified (CCS-like coverage of a band of difficulty).

What survives of the frontier-window rule this project once called CAD-Prune:
the window itself, on the within-class percentile (0 = easiest, 1 = hardest)
of a score cached per (dataset, teacher), by default the teacher's AUM. It is
not the paper's method (that is ``cad_prune``, study.selection.cad). The
window is placed by ``position`` in the room its ``width`` leaves, so every
(position, width) in [0, 1] x (0, 1] is a valid window and a search never
proposes one off the axis: lo = position * (1 - width), hi = lo + width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from study.core.errors import StudyError
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector
from study.selection.difficulty import REFERENCE_AXIS, reference_axis, stratified_window_pick
from study.selection.scores import SCORERS


@dataclass(frozen=True)
class WindowParams(Selector.Params):
    axis: str = REFERENCE_AXIS
    position: float = 0.5
    width: float = 0.2

    def check(self) -> None:
        if self.axis not in SCORERS:
            raise StudyError(f"The difficulty axis {self.axis!r} is not a score; scores are: {', '.join(SCORERS.names())}.")
        if not 0 <= self.position <= 1 or not 0 < self.width <= 1:
            raise StudyError(f"A difficulty window needs 0 <= position <= 1 and 0 < width <= 1; got "
                             f"position={self.position}, width={self.width}.")

    @property
    def window(self) -> tuple[float, float]:
        lo = self.position * (1 - self.width)
        return lo, lo + self.width


@register_selector("difficulty_window")
class DifficultyWindow(Selector):
    """Per class: IPC images drawn one from each of IPC equal strata of the window on the axis."""

    Params = WindowParams
    needs_teacher = True

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        u, (lo, hi) = reference_axis(ctx, self.p.axis), self.p.window
        rng = np.random.default_rng(seed)
        chosen = np.concatenate([members[stratified_window_pick(u[members], lo, hi, ipc, rng)]
                                 for members in ctx.class_members()])
        return from_indices(ctx, chosen, self.provenance(ipc, seed, window=[round(lo, 6), round(hi, 6)],
                                                         mean_difficulty=float(u[chosen].mean())))
