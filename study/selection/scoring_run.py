"""The compute-matched scoring run of CAD (Hard Truths, Sec. 5), cached and shared.

The student's model trains on the *full* training set under the paper's
hard-label recipe (``sgd-step-v1``, DSA, batch 256), whatever the trial's label
regime (the reproduction ``andriotis/ca2d``'s ASSUME 1), for a given number of
training images; EL2N of every clean training image is read at the plan's
checkpoints. A run is cached per (split, scoring protocol, checkpoints, seed):
the scoring protocol holds the student's model and the run's own length and
batch, nothing of the trial's label regime, so one run serves every CAD
selector (``cad_prune``, ``ca2d``, ``rcad``) and every regime that asks for the
same length. A compressed schedule makes a longer run's prefix a different run
(its learning rate drops later), so no run is read off another's prefix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from study.core.cache import Cache
from study.core.data import Dataset
from study.core.evaluate import predict_logits
from study.core.images import materialise
from study.core.protocol import Protocol
from study.core.teacher import sample_dynamics
from study.core.train import train_student

# The paper's small-scale hard-label protocol (Tab. 4), which the scoring run compresses (ASSUME 1).
SCORING_RECIPE = "sgd-step-v1"
SCORING_AUGMENT = "dsa"
SCORING_BATCH = 256


@dataclass(frozen=True)
class ScoringPlan:
    """The scoring run's shape: its steps at ``batch_size``, the steps after which EL2N is read, and K as the
    paper counts it (images seen / N, the full-set epochs)."""

    steps: int
    batch_size: int
    checkpoints: tuple[int, ...]
    epochs: float

    @property
    def train_images(self) -> int:
        return self.steps * self.batch_size


def scoring_plan(images: float, train_size: int, batch_size: int, floor: int) -> ScoringPlan:
    """A run of ``images`` training images, read after every epoch, or at ``floor`` equal segments when it is
    shorter than ``floor`` epochs; a run of fewer steps than checkpoints is lengthened to one step each."""
    steps = max(math.ceil(images / batch_size), floor)
    epochs = steps * batch_size / train_size
    count = max(floor, round(epochs))
    return ScoringPlan(steps, batch_size, tuple(round(i * steps / count) for i in range(1, count + 1)), epochs)


def scoring_protocol(student: Protocol, plan: ScoringPlan) -> Protocol:
    """The paper's HL recipe on the student's model, at the plan's length; nothing of the student's label
    regime, so every regime shares the run."""
    return Protocol(model=student.model, model_kwargs=student.model_kwargs, regime="hl", steps=plan.steps,
                    batch_size=plan.batch_size, recipe=SCORING_RECIPE, augment=SCORING_AUGMENT,
                    precision=student.precision)


def scoring_run(data: Dataset, student: Protocol, cache: Cache, device: str, plan: ScoringPlan, seed: int) -> dict:
    """The cached run for ``student``'s model: ``S`` (K, N) EL2N of the clean training images at each
    checkpoint, and its cost (training images, EL2N pass images)."""
    protocol = scoring_protocol(student, plan)
    key = {"kind": "cad-scoring", "split": data.summary(), "protocol": protocol.to_dict(),
           "checkpoints": list(plan.checkpoints), "seed": seed}

    def compute() -> dict:
        x, y = materialise(data.train_x), data.train_y
        wanted, rows = set(plan.checkpoints), []

        def record(step: int, model) -> None:
            if step in wanted:
                with torch.no_grad():
                    rows.append(sample_dynamics(predict_logits(model, x, device), y)["el2n"])

        train_student(x, y, data, protocol, seed=seed, device=device, eval_points=1, on_checkpoint=record,
                      checkpoint_every=1)
        return {"S": torch.stack(rows).float(), "train_images": plan.train_images,
                "el2n_images": len(plan.checkpoints) * len(y)}

    return cache.get_or_compute("cad-scoring", key, compute, code=[__name__])


