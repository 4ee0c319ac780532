"""CA2D: RDED's patch pipeline with CAD-Prune's difficulty window in place of "easiest first".

``ca2d``, per class:
1. ``m`` candidate real images (raised to at least ``ipc * f^2 / w`` so the
   window can hold the patches it needs; capped by the class size);
2. ``k`` random-resized crops each, scored by the observer (the teacher); the
   lowest-loss crop of each candidate is kept (as in RDED: the observer picks
   the most class-like view of each image);
3. each kept patch takes its source image's place on the reference axis
   (``study.selection.cad.reference_axis``, one per dataset and teacher), so
   CA2D's windows and CAD-Prune's lie on one scale. The budget-aware frontier
   u*_c is the fraction of the class's patches that the CAD proxy (trained
   under ctx.protocol on a random subset of the target IPC, cached) gets right
   on the view the observer saw. The proxy trains on that kind of view too
   (square crops of its subset, cut at 1/f of the side and padded in the mean
   colour, ``PatchPipeline.scored_views``): a proxy that only ever saw whole
   images would misjudge padded tiles and so the frontier;
4. ``ipc * f^2`` patches are drawn stratified inside the CAD window
   (:class:`study.selection.cad.CADParams`: the rule's, or one set by
   ``lo`` / ``position`` and ``width``), then placed at random in the f x f
   grids (slot layout as in study.selection.rded).

The factor follows RDED's rule (f = 1 below 128 px, f = 2 from 128 px), and a
set with f > 1 brings the same training views as an RDED set.

``ca2d_coreset`` is the same alignment without crops or stitching (f = 1,
whole images, proxy margins of the whole images): it returns real indices, so
comparing it with ``ca2d`` separates the effect of stitching from the effect
of difficulty alignment, and comparing it with ``cad_prune`` shows the effect
of drawing from ``m`` candidates only. Patch difficulty is the source image's:
a crop is RDED's most class-like view of its image, and giving crops their own
percentiles would need an axis per budget again.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dataclasses import dataclass

from study.selection.base import Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector
from study.selection.difficulty import stratified_window_pick
from study.selection.cad import (AXIS_IDENTITY, CADParams, cad_proxy, proxy_accuracy, proxy_models, reference_axis,
                                 rounded)
from study.selection.rded import FULL_BOX, PatchParams, PatchPipeline, best_crops, patch_size, stitch
from study.core.seeding import generator


class CADPatchSelector(Selector):
    family = "dd"
    needs_teacher = True
    budget_aware = True
    identity = AXIS_IDENTITY

    @dataclass(frozen=True)
    class Params(CADParams, PatchParams):
        pass

    def __init__(self, **params):
        super().__init__(**params)
        self.cad, self.pipeline = self.p, PatchPipeline(self.p)

    def pool_size(self, need: int, ipc: int, class_size: int) -> int:
        """Candidates per class: m, raised so a window of the chosen width can hold ``need`` items."""
        return min(class_size, max(self.pipeline.m, math.ceil(need / self.cad.width_for(ipc, class_size))))

    def proxy(self, ctx: SelectionContext, ipc: int, views=None) -> dict:
        return cad_proxy(ctx, ipc, self.cad.proxy_seeds, self.cad.checkpoints, self.cad.late, views)

    def windows(self, u_star: float, ipc: int, class_size: int) -> tuple[tuple[float, float], list[float]]:
        """(the window kept, the rule's window rounded for the provenance)."""
        return self.cad.window(u_star, ipc, class_size), rounded(self.cad.rule_window(u_star, ipc, class_size))


@register_selector("ca2d")
class CA2D(CADPatchSelector):
    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        pipe = self.pipeline
        factor = pipe.factor_for(ctx)
        patch_size(ctx.data.image_shape, factor)
        need = ipc * factor * factor
        rng, g = np.random.default_rng(seed), generator(seed)
        observer = pipe.observer(ctx)
        axis = reference_axis(ctx, self.cad.axis)
        models = proxy_models(ctx, self.proxy(ctx, ipc, pipe.scored_views(ctx, factor))["states"])
        images, chosen, windows, rule, u_stars, slot_u, pools = [], [], [], [], [], [], []
        for c, members in enumerate(ctx.class_members()):
            cand = torch.as_tensor(pipe.candidates(members, self.pool_size(need, ipc, len(members)), rng))
            labels = torch.full((len(cand),), c, dtype=torch.long)
            patches = best_crops(ctx.data.train_x[cand], labels, cand, observer, fill=ctx.data.mean, k=pipe.k,
                                 factor=factor, g=g, scale=pipe.scale, score_view=pipe.score_view,
                                 per_image=math.ceil(need / len(cand)), device=ctx.device)
            u = axis[patches.source.numpy()]
            u_star = proxy_accuracy(models, patches.views, c)
            (lo, hi), rule_window = self.windows(u_star, ipc, len(members))
            pos = stratified_window_pick(u, lo, hi, need, rng)
            pos = pos[torch.randperm(need, generator=g).numpy()]
            picked = patches.take(torch.as_tensor(pos))
            images.append(stitch(picked.pixels, factor))
            chosen.append(picked)
            windows.append(rounded((lo, hi)))
            rule.append(rule_window)
            u_stars.append(round(u_star, 4))
            slot_u.append(torch.as_tensor(u[pos]))
            pools.append(len(cand))
        u_all = torch.cat(slot_u)
        return pipe.assemble(ctx, images, chosen, factor, ipc, self.provenance(
            ipc, seed, budget=ctx.protocol.to_dict(), axis=self.cad.axis, windows=windows,
            rule_windows=rule, u_star=u_stars, candidates_per_class=pools, mean_difficulty=float(u_all.mean()),
            patch_difficulty=u_all.view(-1, factor * factor).mul(1e4).round().div(1e4).tolist()))


@register_selector("ca2d_coreset")
class CA2DCoreset(CADPatchSelector):
    """CA2D with f = 1 and whole images: difficulty alignment over m candidates, no crops, no stitching."""

    family = "coreset"

    @dataclass(frozen=True)
    class Params(CADParams):
        m: int = 300

    def __init__(self, **params):
        Selector.__init__(self, **params)
        self.cad, self.pipeline = self.p, PatchPipeline(PatchParams(m=self.p.m, k=1, factor=1))

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        rng = np.random.default_rng(seed)
        frontier = self.proxy(ctx, ipc)["u_star"].numpy()
        axis = reference_axis(ctx, self.cad.axis)
        picks, windows, rule, u_stars, diffs, pools = [], [], [], [], [], []
        for c, members in enumerate(ctx.class_members()):
            cand = self.pipeline.candidates(members, self.pool_size(ipc, ipc, len(members)), rng)
            u = axis[cand]
            u_star = float(frontier[c])
            (lo, hi), rule_window = self.windows(u_star, ipc, len(members))
            pos = stratified_window_pick(u, lo, hi, ipc, rng)
            picks.append(cand[pos])
            diffs.append(u[pos])
            windows.append(rounded((lo, hi)))
            rule.append(rule_window)
            u_stars.append(round(u_star, 4))
            pools.append(len(cand))
        chosen = np.concatenate(picks)
        d = np.concatenate(diffs)
        return from_indices(ctx, chosen, self.provenance(
            ipc, seed, factor=1, budget=ctx.protocol.to_dict(), axis=self.cad.axis, windows=windows,
            rule_windows=rule, u_star=u_stars,
            candidates_per_class=pools, mean_difficulty=float(d.mean()),
            patch_source=[[int(i)] for i in chosen], patch_box=[[list(FULL_BOX)]] * len(chosen),
            patch_difficulty=np.round(d, 4).reshape(-1, 1).tolist()))
