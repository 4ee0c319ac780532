"""Teachers: full-data models that supply soft labels, observer scores and training dynamics.

A teacher is trained once per (dataset, model, recipe, seed) and cached by
content hash. While it trains, a clean (unaugmented) pass over the training
split after every epoch records each sample's training dynamics, which the
forgetting, AUM and EL2N-style scorers read instead of training again.
A user with trained weights passes ``path`` and skips training.
"""
from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from study.core.cache import Cache
from study.core.data import Dataset
from study.core.errors import StudyError
from study.core.evaluate import accuracy, eval_chunk, predict_logits
from study.core.images import FileImages, materialise
from study.core.models import model_for
from study.core.passes import PassColumns, run_pass
from study.core.precision import resolve_precision
from study.core.protocol import TeacherSpec
from study.core.seeding import content_hash
from study.core.train import default_device, train_student

# The code a teacher's cache entries (its weights, its pretrained accuracy, its outputs pass) are versioned by:
# this module and what it imports, and the study's one pass over an image tree, which makes the same entries.
CODE = [__name__, "study.core.tree_pass"]

log = logging.getLogger(__name__)

DYNAMICS = ("correct", "p_true", "margin", "logit_margin", "loss", "el2n")


@dataclass
class Teacher:
    model: nn.Module
    dynamics: dict[str, torch.Tensor]
    test_acc: float
    spec: TeacherSpec


def sample_dynamics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample statistics of one clean pass: correctness, true-class probability, margins, loss, EL2N."""
    probs = logits.softmax(1)
    true_p = probs.gather(1, labels[:, None]).squeeze(1)
    other_p = probs.scatter(1, labels[:, None], -1.0).amax(1)
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other_logit = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    onehot = F.one_hot(labels, logits.shape[1]).float()
    return {
        "correct": (logits.argmax(1) == labels).float(),
        "p_true": true_p,
        "margin": true_p - other_p,
        "logit_margin": true_logit - other_logit,
        "loss": F.cross_entropy(logits, labels, reduction="none"),
        "el2n": (probs - onehot).norm(dim=1),
    }


def train_teacher(data: Dataset, spec: TeacherSpec, device: str | None = None) -> Teacher:
    """Train on the whole split, decoded once if file-backed (for ImageNet-sized trees, supply weights instead)."""
    device = device or default_device()
    history: list[dict[str, torch.Tensor]] = []
    train_x = materialise(data.train_x)
    start = time.perf_counter()

    def record(step: int, model: nn.Module) -> None:
        history.append(sample_dynamics(predict_logits(model, train_x, device), data.train_y))
        log.info("teacher epoch %d/%d: training accuracy %.1f%%, %.1f min", len(history), spec.epochs,
                 100 * history[-1]["correct"].mean().item(), (time.perf_counter() - start) / 60)

    result = train_student(train_x, data.train_y, data, spec.protocol(len(data.train_y)), seed=spec.seed,
                           device=device, on_checkpoint=record,
                           checkpoint_every=spec.steps_per_epoch(len(data.train_y)))
    dynamics = {k: torch.stack([h[k] for h in history]).half() for k in DYNAMICS}
    return Teacher(result.model.cpu().eval(), dynamics, result.test_acc, spec)


def load_weights(model: nn.Module, spec: TeacherSpec) -> nn.Module:
    """``model`` with the checkpoint at ``spec.path`` loaded (its normalisation included), in eval mode."""
    try:
        state = torch.load(spec.path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise StudyError(f"The teacher weights at {spec.path} could not be read ({err}).") from None
    except (pickle.UnpicklingError, EOFError):  # a pickled whole model, or not a checkpoint at all
        raise StudyError(f"The teacher weights at {spec.path} could not be read as a state dict; "
                         "save them with torch.save(model.state_dict()).") from None
    try:
        model.load_state_dict(state.get("state_dict", state))
    except RuntimeError:
        raise StudyError(f"The teacher weights at {spec.path} do not fit model {spec.model!r}.") from None
    return model.eval()


def accuracy_key(data: Dataset, spec: TeacherSpec) -> dict:
    """What a pretrained teacher's accuracy on a file-backed test split depends on: the split and the checkpoint."""
    stat = os.stat(spec.path)
    return {"kind": "pretrained-accuracy", "dataset": data.name, "split": data.summary(), "test": data.test_x.digest(),
            "weights": [stat.st_size, stat.st_mtime_ns], **spec.to_dict()}


def load_pretrained(data: Dataset, spec: TeacherSpec, device: str, cache: Cache | None = None) -> Teacher:
    """The teacher at ``spec.path``. On a file-backed test split its accuracy is computed once per (checkpoint,
    test split) and cached, as every process that loads the teacher would otherwise decode the split again; an
    in-memory split is evaluated here, and nothing is written."""
    model = load_weights(model_for(data, spec.model, **spec.model_kwargs), spec)

    def evaluate() -> dict:
        return {"test_acc": accuracy(model, data.test_x, data.test_y, device)}

    entry = (cache or Cache()).get_or_compute("teachers", accuracy_key(data, spec), evaluate, code=CODE) \
        if isinstance(data.test_x, FileImages) else evaluate()
    return Teacher(model, {}, entry["test_acc"], spec)


def get_teacher(data: Dataset, spec: TeacherSpec, cache: Cache | None = None, device: str | None = None) -> Teacher:
    """The teacher for ``spec``: loaded from ``spec.path``, from the cache, or trained and cached."""
    device = device or default_device()
    if spec.path:
        return load_pretrained(data, spec, device, cache)
    cache = cache or Cache()
    model = model_for(data, spec.model, **spec.model_kwargs)
    # The architecture's parameter shapes are part of the key: a change to a model's code (say, its depth on
    # small inputs) must retrain the teacher, not load a checkpoint that no longer fits.
    arch = content_hash([(k, list(v.shape)) for k, v in model.state_dict().items()])
    precision = resolve_precision(spec.protocol(len(data.train_y)).precision, device)
    key = {"kind": "teacher", "dataset": data.name, "split": data.summary(), "arch": arch, "precision": precision,
           **spec.to_dict()}

    def compute() -> dict:
        teacher = train_teacher(data, spec, device)
        return {"state_dict": teacher.model.state_dict(), "dynamics": teacher.dynamics, "test_acc": teacher.test_acc}

    entry = cache.get_or_compute("teachers", key, compute, code=CODE)
    model.load_state_dict(entry["state_dict"])
    return Teacher(model.eval(), entry["dynamics"], entry["test_acc"], spec)


@dataclass(frozen=True)
class ModelOutputs:
    """A pass's work: a model's logits and penultimate features of clean images (one forward for both)."""

    model: nn.Module

    def bind(self, device: str):
        model = self.model.to(device).eval()

        @torch.inference_mode()
        def outputs(images: torch.Tensor, ok: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
            features = model.features(images.to(device).float().div_(255))
            logits = model.backbone.head(features)
            return {"logits": logits.float().cpu().numpy(), "features": features.float().cpu().numpy()}

        return outputs


def outputs_key(data: Dataset, spec: TeacherSpec) -> dict:
    return {"kind": "teacher-outputs", "split": data.summary(), "teacher": spec.to_dict()}


def teacher_outputs(data: Dataset, teacher: Teacher, cache: Cache, device: str) -> PassColumns:
    """The teacher's logits and features of every training image, from one full-set pass stored once per
    (dataset, teacher) as Parquet; every score and selector that reads them reads this table, each column
    only when asked for (the features of ImageNet are gigabytes, which a logits-only score never needs)."""
    folder = cache.folder("passes", outputs_key(data, teacher.spec),
                          lambda out: run_pass(data.train_x, ModelOutputs(teacher.model.cpu()), out,
                                               batch_size=eval_chunk(device), device=device), code=CODE)
    return PassColumns(folder)
