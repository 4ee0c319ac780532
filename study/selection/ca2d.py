"""CA2D (Hard Truths, Sec. 5): RDED's released pipeline over each class's highest-CAD images.

The paper crops, selects and stitches patches "in the RDED-style" from the
CAD coreset; the reproduction ``andriotis/ca2d`` (``ca2d.py``,
``synthesize_ca2d``, its ASSUME 8) reads this as RDED's Algorithm 1 with the
per-class random pool of ``mipc`` = 300 images replaced by the class's 300
highest-CAD images. Everything after the pool is RDED's as released
(:class:`study.selection.rded.PatchPipeline`: 5 square crops a candidate, the
observer's lowest-loss crop of each, the ``ipc * f^2`` lowest of the class
stitched in the released order, f = 1 below 128 px). CAD comes from the same
cached scoring run as CAD-Prune's (:func:`study.selection.cad.compute_cad`).

A pool of 300 is 60% of a CIFAR-100 class (500 images) but 5% of a
Fashion-MNIST class (6,000): there the pool is the hardest-by-CAD tail of the
class, and RDED's crop scoring then picks the most class-like crops within
that tail.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from study.core.errors import StudyError
from study.core.seeding import generator
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, register_selector
from study.selection.cad import CADParams, compute_cad, ranked
from study.selection.difficulty import difficulty_record
from study.selection.rded import PatchParams, PatchPipeline


def candidate_pools(cad: np.ndarray, members: list[np.ndarray], mipc: int, order: str) -> list[np.ndarray]:
    """Each class's ``mipc`` highest-CAD members (``order="lowest"``: lowest), all of a smaller class, as sorted
    dataset indices."""
    return [np.sort(m[ranked(cad[m], mipc, order)]) for m in members]


@dataclass(frozen=True)
class CA2DParams(CADParams, PatchParams):
    mipc: int = 300  # the pool a class, RDED's released mipc (its ``m``)

    def check(self) -> None:
        CADParams.check(self)
        PatchParams.check(self)
        if self.mipc < 1:
            raise StudyError(f"CA2D's pool (mipc) must hold at least one image a class, not {self.mipc}.")


@register_selector("ca2d")
class CA2D(Selector):
    Params = CA2DParams
    family = "dd"
    budget_aware = True
    needs_teacher = True  # the observer

    def __init__(self, **params):
        super().__init__(**params)
        self.pipeline = PatchPipeline(self.p)

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        cad, info = compute_cad(ctx, self.p)
        pools = candidate_pools(cad, ctx.class_members(), self.p.mipc, self.p.order)
        selection = self.pipeline.synthesise(ctx, [torch.as_tensor(p) for p in pools], ipc, generator(seed),
                                                 self.provenance(ipc, seed, **info))
        sources = np.asarray(selection.provenance["patch_source"]).reshape(-1)
        selection.provenance.update(difficulty_record(ctx, sources),
                                    pool_cad=[[round(float(cad[p].min()), 6), round(float(cad[p].max()), 6)]
                                              for p in pools])
        return selection
