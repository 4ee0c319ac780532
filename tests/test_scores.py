"""Scores: known answers on constructed inputs, and the cached scorers on real digits."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from study.core.cache import Cache
from study.core.data import Dataset
from study.core.errors import StudyError
from study.core.models import model_for
from study.selection.scores import (
    SCORERS, checkpoint_scores, compute_scores, distance_to_class_median, dynamic_uncertainty, forgetting_events,
    proxy_scores, uncertainty,
)
from study.core.protocol import Protocol
from study.selection import SelectionContext
from study.core.seeding import derive_seed
from study.core.teacher import TeacherSpec

TINY_PROXY = {"seeds": 2, "fraction": 0.05}


def toy_context(cache_root, labels, features=None, dynamics=None) -> SelectionContext:
    """A context over blank images whose teacher is only a spec plus scripted dynamics and features."""
    labels = torch.as_tensor(labels)
    x = torch.zeros((len(labels), 1, 4, 4), dtype=torch.uint8)
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    data = Dataset("toy", classes, x, labels, x[:0], labels[:0], x[:0], labels[:0], (0.5,), (0.25,))
    teacher = SimpleNamespace(spec=TeacherSpec(), dynamics=dynamics or {}, model=None)
    ctx = SelectionContext(data, Cache(cache_root), teacher_factory=lambda: teacher)
    if features is not None:
        ctx.__dict__["teacher_outputs"] = {"features": torch.as_tensor(features, dtype=torch.float32)}
    return ctx


@pytest.fixture(scope="session")
def digits_ctx(digits, digits_teacher, cache_dir):
    budget = Protocol(steps=40, batch_size=32, model_kwargs={"width": 16})
    return SelectionContext(digits, Cache(cache_dir), "cpu", budget, lambda: digits_teacher)


def test_el2n_and_grand_match_their_formulas_on_a_fixed_model(digits):
    torch.manual_seed(0)
    model = model_for(digits, "convnet", width=8).eval()
    x, y = digits.train_x[:16], digits.train_y[:16]
    got = checkpoint_scores(model, x, y, "cpu")

    logits = model(x.float() / 255)
    el2n = (logits.softmax(1) - F.one_hot(y, 10).float()).norm(dim=1)
    assert torch.allclose(got["el2n"], el2n.detach(), atol=1e-6)

    head = model.backbone.head
    grand = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i:i + 1].float() / 255), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
        grand.append(torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum()))
    assert torch.allclose(got["grand"], torch.stack(grand), atol=1e-5)


def test_forgetting_counts_correct_to_incorrect_transitions():
    history = torch.tensor([
        [1, 0, 1, 0, 1, 1],  # forgotten twice
        [0, 0, 1, 1, 1, 1],  # learned once, never forgotten
        [0, 0, 0, 0, 0, 0],  # never learned: hardest of all
        [1, 1, 1, 1, 1, 0],  # forgotten at the end
        [0, 1, 0, 1, 0, 1],  # forgotten twice, learned three times
    ]).T
    assert forgetting_events(history).tolist() == [2, 0, 6, 1, 2]


def test_aum_averages_the_logit_margin_and_negates_it(tmp_path):
    margins = torch.tensor([[2.0, -1.0, 0.5], [4.0, -3.0, 0.5]])
    ctx = toy_context(tmp_path, [0, 0, 1], dynamics={"logit_margin": margins.half()})
    assert compute_scores(ctx, "aum").tolist() == [-3.0, 2.0, -0.5]


def test_dynamic_uncertainty_is_the_mean_windowed_std():
    p = torch.tensor([[0.9, 0.1], [0.9, 0.9], [0.9, 0.1], [0.9, 0.9]])
    windows = torch.tensor([[0.1, 0.9, 0.1], [0.9, 0.1, 0.9]]).std(dim=1)
    assert torch.allclose(dynamic_uncertainty(p, 3), torch.tensor([0.0, windows.mean()]))
    with pytest.raises(StudyError, match="span"):
        dynamic_uncertainty(p, 5)


def test_uncertainties_of_known_distributions():
    probs = torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]])
    assert torch.allclose(uncertainty(probs, "least_confidence"), torch.tensor([0.5, 0.0]))
    assert torch.allclose(uncertainty(probs, "margin"), torch.tensor([0.8, 0.0]))
    expected = -(0.5 * torch.log(torch.tensor(0.5)) + 0.3 * torch.log(torch.tensor(0.3))
                 + 0.2 * torch.log(torch.tensor(0.2)))
    assert torch.allclose(uncertainty(probs, "entropy"), torch.stack([expected, torch.tensor(0.0)]), atol=1e-6)


def test_centre_distance_uses_the_class_median_feature():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [5.0, 5.0], [5.0, 7.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # class 0: median (1, 0); class 1: median (5, 6), interpolated as NumPy does
    assert distance_to_class_median(features, labels).tolist() == [1.0, 0.0, 9.0, 1.0, 1.0]


def test_dynamics_scores_need_a_trained_teacher(tmp_path):
    ctx = toy_context(tmp_path, [0, 1])
    with pytest.raises(StudyError, match="dynamics"):
        compute_scores(ctx, "forgetting")


def test_unknown_scores_and_options_fail_in_one_sentence(tmp_path):
    ctx = toy_context(tmp_path, [0, 1])
    with pytest.raises(StudyError, match="Unknown score"):
        compute_scores(ctx, "loss-of-nerve")
    with pytest.raises(StudyError, match="no option"):
        compute_scores(ctx, "el2n", epochs=3)
    with pytest.raises(StudyError, match="fraction"):
        compute_scores(ctx, "el2n", fraction=0.0)


def test_every_score_covers_the_training_split_and_is_cached(digits_ctx, cache_dir):
    n = len(digits_ctx.data.train_y)
    for name in SCORERS.names():
        params = TINY_PROXY if name in ("el2n", "grand") else {}
        scores = compute_scores(digits_ctx, name, **params)
        assert scores.shape == (n,) and scores.dtype == torch.float32 and torch.isfinite(scores).all(), name
    entries = len(list((cache_dir / "scores").glob("*.pt")))
    proxies = len(list((cache_dir / "proxy-scores").glob("*.pt")))
    assert proxies == TINY_PROXY["seeds"], "GraNd must reuse EL2N's proxy runs"
    compute_scores(digits_ctx, "dyn_unc", span=None)  # the default spelled out: the same entry
    assert len(list((cache_dir / "scores").glob("*.pt"))) == entries


def test_el2n_averages_distinct_proxy_seeds(digits_ctx):
    fraction = TINY_PROXY["fraction"]
    runs = [proxy_scores(digits_ctx, fraction, derive_seed("proxy", i)) for i in range(2)]
    assert not torch.equal(runs[0]["el2n"], runs[1]["el2n"])
    mean = (runs[0]["el2n"] + runs[1]["el2n"]) / 2
    assert torch.allclose(compute_scores(digits_ctx, "el2n", **TINY_PROXY), mean)
    assert ((mean >= 0) & (mean <= 2 ** 0.5)).all()
