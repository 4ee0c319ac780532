"""Per-sample difficulty scores over the training split, one convention for all: higher = harder.

A scorer is a function ``(ctx, **params) -> Tensor (N,)`` registered in
:data:`SCORERS`; :func:`compute_scores` resolves its parameters (so a default
spelled out and a default left out hit the same entry) and caches the result
by content hash: dataset, teacher spec, score name, parameters (which include
any seeds). Selection is then a cheap function of (scores, IPC, seed).

Where each score reads from:

- training dynamics recorded while the teacher trained (``forgetting``,
  ``aum``, ``dyn_unc``), so they cost nothing beyond the teacher;
- the trained teacher's predictions or penultimate features on clean images
  (``entropy``, ``margin``, ``least_confidence``, ``centre_distance``);
- proxies trained with the teacher's own recipe and stopped early
  (``el2n``, ``grand``). Both scores of one proxy come from the same cached
  run, so asking for GraNd after EL2N trains nothing new.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from study.core.errors import StudyError
from study.core.evaluate import predict_features
from study.core.registry import Registry
from study.core.precision import resolve_precision
from study.core.seeding import derive_seed
from study.core.teacher import sample_dynamics
from study.core.train import train_student

ScorerFn = Callable[..., torch.Tensor]
SCORERS: Registry[ScorerFn] = Registry("score")


def score_options(name: str) -> dict[str, Any]:
    """The parameters a score takes, with their defaults."""
    params = list(inspect.signature(SCORERS.get(name)).parameters.values())[1:]
    return {p.name: p.default for p in params}


def resolve_score_params(name: str, params: dict) -> dict:
    """``params`` completed with the score's defaults; an unknown parameter is a StudyError."""
    options = score_options(name)
    unknown = sorted(set(params) - set(options))
    if unknown:
        valid = ", ".join(options) or "none"
        raise StudyError(f"Score {name!r} has no option(s) {unknown}; its options are: {valid}.")
    return {**options, **params}


def compute_scores(ctx, name: str, **params) -> torch.Tensor:
    """The cached (N,) float32 score ``name`` of every training sample of ``ctx.data``."""
    resolved = resolve_score_params(name, params)
    key = {"kind": "scores", "split": ctx.data.summary(), "teacher": ctx.teacher.spec.to_dict(),
           "score": name, "params": resolved}
    return ctx.cache.get_or_compute("scores", key, lambda: SCORERS.get(name)(ctx, **resolved).float(),
                                    code=[__name__])


# ---------------------------------------------------------------- training dynamics

def dynamics(ctx, name: str, score: str) -> torch.Tensor:
    """One recorded dynamics series (epochs, N) as float; a teacher loaded from weights has none."""
    recorded = ctx.teacher.dynamics
    if name not in recorded:
        raise StudyError(f"Score {score!r} reads the teacher's recorded training dynamics, and a teacher loaded "
                         "from weights has none; train the teacher here or choose a proxy or prediction score.")
    return recorded[name].float()


def forgetting_events(correct: torch.Tensor) -> torch.Tensor:
    """Correct -> incorrect transitions per sample of a (T, N) correctness history.

    Toneva et al. rank never-learned samples as forgotten infinitely often;
    they get T, more than the at most T // 2 events any learned sample can have.
    """
    ok = correct.bool()
    events = (ok[:-1] & ~ok[1:]).sum(0).float()
    return torch.where(ok.any(0), events, torch.full_like(events, len(ok)))


def dynamic_uncertainty(p_true: torch.Tensor, span: int) -> torch.Tensor:
    """He et al.'s Dyn-Unc: the std of the true-class probability over each ``span``-epoch window, averaged."""
    if not 2 <= span <= len(p_true):
        raise StudyError(f"Dyn-Unc's window span must be between 2 and the {len(p_true)} recorded teacher epochs, "
                         f"not {span}; lower span or train the teacher longer.")
    return p_true.unfold(0, span, 1).std(dim=-1).mean(0)


@SCORERS.register("forgetting")
def forgetting(ctx) -> torch.Tensor:
    return forgetting_events(dynamics(ctx, "correct", "forgetting"))


@SCORERS.register("aum")
def aum(ctx) -> torch.Tensor:
    """Pleiss et al.'s area under the margin (true logit - largest other), negated: a low AUM is hard."""
    return -dynamics(ctx, "logit_margin", "aum").mean(0)


@SCORERS.register("dyn_unc")
def dyn_unc(ctx, span: int | None = None) -> torch.Tensor:
    """Span 10 epochs is the paper's window; by default a teacher that ran fewer epochs uses all of its own."""
    p_true = dynamics(ctx, "p_true", "dyn_unc")
    return dynamic_uncertainty(p_true, span or min(10, len(p_true)))


# ---------------------------------------------------------------- the trained teacher

def teacher_probs(ctx) -> torch.Tensor:
    return ctx.teacher_outputs["logits"].softmax(1)


def uncertainty(probs: torch.Tensor, kind: str) -> torch.Tensor:
    """Coleman et al.'s uncertainty of the predicted distribution (the label is not used)."""
    if kind == "entropy":
        return -(probs * probs.clamp_min(1e-12).log()).sum(1)
    top = probs.topk(2, dim=1).values
    if kind == "least_confidence":
        return 1 - top[:, 0]
    return 1 - (top[:, 0] - top[:, 1])


@SCORERS.register("entropy")
def entropy(ctx) -> torch.Tensor:
    return uncertainty(teacher_probs(ctx), "entropy")


@SCORERS.register("least_confidence")
def least_confidence(ctx) -> torch.Tensor:
    return uncertainty(teacher_probs(ctx), "least_confidence")


@SCORERS.register("margin")
def margin(ctx) -> torch.Tensor:
    """One minus the gap between the two most likely classes."""
    return uncertainty(teacher_probs(ctx), "margin")


def distance_to_class_median(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each feature to its class's coordinate-wise median feature (Moderate-DS).

    The median interpolates between the two middle values, as NumPy's does in
    Moderate-DS's code (torch.median would take the lower one).
    """
    out = torch.empty(len(labels))
    for c in labels.unique():
        idx = torch.nonzero(labels == c).squeeze(1)
        out[idx] = (features[idx] - features[idx].quantile(0.5, dim=0)).norm(dim=1)
    return out


@SCORERS.register("centre_distance")
def centre_distance(ctx) -> torch.Tensor:
    """Atypicality: far from the class's median teacher feature."""
    return distance_to_class_median(ctx.features, ctx.labels)


# ---------------------------------------------------------------- early-stopped proxies

def checkpoint_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """EL2N and GraNd of one model on clean images.

    GraNd is Paul et al.'s gradient norm restricted to the last layer, as in
    DeepCore: for a linear head the cross-entropy gradient is
    (p - y) [h, 1]^T, so its norm is EL2N * sqrt(|h|^2 + 1) (no +1 without a
    bias), exact and without a backward pass per sample.
    """
    head = model.backbone.head
    feats = predict_features(model, images, device)
    with torch.inference_mode():
        logits = head(feats.to(device)).float().cpu()
    el2n = sample_dynamics(logits, labels)["el2n"]
    bias = 0.0 if head.bias is None else 1.0
    return {"el2n": el2n, "grand": el2n * (feats.pow(2).sum(1) + bias).sqrt()}


def proxy_scores(ctx, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """EL2N and GraNd of one proxy stopped at ``fraction`` of the teacher's training, cached.

    The proxy runs the teacher's recipe, schedule included, and is scored at
    the checkpoint, as Paul et al. score epoch 20 of a 200-epoch run while the
    learning rate is still high; a short run annealed to zero would be a
    different, more converged model.
    """
    spec, data = ctx.teacher.spec, ctx.data
    precision = resolve_precision(spec.protocol(len(data.train_y)).precision, ctx.device)
    key = {"kind": "proxy", "split": data.summary(), "teacher": spec.to_dict(), "fraction": fraction, "seed": seed,
           "precision": precision}

    def compute() -> dict[str, torch.Tensor]:
        protocol = spec.protocol(len(data.train_y))
        proxy = train_student(data.train_x, data.train_y, data, protocol, seed=seed, device=ctx.device, eval_points=1,
                              stop_at=max(1, round(fraction * protocol.steps))).model
        return checkpoint_scores(proxy, data.train_x, data.train_y, ctx.device)

    return ctx.cache.get_or_compute("proxy-scores", key, compute, code=[__name__])


def proxy_average(ctx, score: str, fraction: float, seeds: int) -> torch.Tensor:
    if not 0 < fraction <= 1 or seeds < 1:
        raise StudyError(f"Score {score!r} needs 0 < fraction <= 1 and at least one proxy seed; "
                         f"got fraction={fraction}, seeds={seeds}.")
    runs = [proxy_scores(ctx, fraction, derive_seed("proxy", i)) for i in range(seeds)]
    return torch.stack([run[score] for run in runs]).mean(0)


@SCORERS.register("el2n")
def el2n(ctx, fraction: float = 0.2, seeds: int = 4) -> torch.Tensor:
    """|softmax - onehot| early in training, averaged over proxy seeds.

    Paul et al. score epoch 20 of 200 (a tenth) over 10 seeds. Teachers here
    run 5 to 50 epochs, and a tenth of 5 epochs has barely started to learn,
    so the default is a fifth; 4 seeds keep the cost below one teacher run.
    """
    return proxy_average(ctx, "el2n", fraction, seeds)


@SCORERS.register("grand")
def grand(ctx, fraction: float = 0.2, seeds: int = 4) -> torch.Tensor:
    """Last-layer gradient norm at the same early checkpoints as EL2N (DeepCore also scores a trained proxy)."""
    return proxy_average(ctx, "grand", fraction, seeds)
