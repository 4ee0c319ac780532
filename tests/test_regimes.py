"""Each label regime's loss equals a hand computation on a tiny fixed batch, with and without CutMix and T^2."""
from __future__ import annotations

import math

import pytest
import torch

from study.core.augment import Mix, cutmix
from study.core.errors import StudyError
from study.core.models import create_model
from study.core.protocol import Protocol
from study.core.regimes import build_regime, list_regimes
from study.core.seeding import generator

C, B, N = 5, 4, 6


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = create_model("convnet", 1, C, 8, mean=(0.3,), std=(0.25,), width=4, depth=2).eval()
    for p in model.parameters():  # larger weights so the teacher's distribution is far from uniform
        p.data.mul_(3)
    return model


@pytest.fixture(scope="module")
def batch():
    g = generator(7)
    stored = torch.randint(0, 256, (N, 1, 8, 8), dtype=torch.uint8, generator=g)
    index = torch.tensor([3, 0, 5, 3])  # a repeated image, as in a batch drawn from a tiny subset
    views = stored[index].float() / 255
    labels = torch.tensor([1, 4, 0, 1])
    logits = torch.randn(B, C, generator=g) * 2
    return stored, index, views, labels, logits


# ---- hand computations, element by element, in float64 ---------------------------------------------------------

def hand_softmax(z, t=1.0):
    rows = []
    for row in z.double().tolist():
        e = [math.exp(v / t) for v in row]
        s = sum(e)
        rows.append([v / s for v in e])
    return rows


def hand_ce(z, y):
    total = 0.0
    for row, label in zip(z.double().tolist(), y.tolist()):
        total += math.log(sum(math.exp(v) for v in row)) - row[label]
    return total / len(y)


def hand_kl(student_logits, target_rows, t, t2):
    q = hand_softmax(student_logits, t)
    total = sum(p * (math.log(p) - math.log(qq)) for prow, qrow in zip(target_rows, q) for p, qq in zip(prow, qrow)
                if p > 0)
    loss = total / len(target_rows)
    return loss * t * t if t2 else loss


def hand_teacher_probs(teacher, views, t):
    with torch.no_grad():
        return hand_softmax(teacher(views), t)


def mix_rows(rows, mix):
    return [[mix.lam * a + (1 - mix.lam) * b for a, b in zip(rows[i], rows[j])] for i, j in enumerate(mix.perm.tolist())]


def fixed_mix(views):
    mixed, mix = cutmix(views, generator(11))
    assert mix.perm.tolist() != list(range(B)) and 0.05 < mix.lam < 0.95, "pick a seed with a real mix"
    return mixed, mix


# ---- the tests ----------------------------------------------------------------------------------------------------

def test_every_regime_is_tested():
    assert set(list_regimes()) == {"hl", "sl", "sl_kd"}


def test_hard_labels(batch):
    stored, index, views, labels, logits = batch
    rule = build_regime(Protocol(regime="hl"), stored_images=stored)
    assert rule.loss(logits, views, labels, index, None).item() == pytest.approx(hand_ce(logits, labels), rel=1e-6)
    _, mix = fixed_mix(views)
    expected = mix.lam * hand_ce(logits, labels) + (1 - mix.lam) * hand_ce(logits, labels[mix.perm])
    assert rule.loss(logits, views, labels, index, mix).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("t2", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_fixed_soft_labels(batch, teacher, temperature, t2):
    stored, index, views, labels, logits = batch
    protocol = Protocol(regime="sl", temperature=temperature, t2_scale=t2)
    rule = build_regime(protocol, teacher=teacher, stored_images=stored)
    # The targets are the teacher's softmax at T on each stored, unaugmented image, computed once.
    stored_probs = hand_teacher_probs(teacher, stored.float() / 255, temperature)
    assert torch.allclose(rule.targets.double(), torch.tensor(stored_probs, dtype=torch.float64), atol=1e-6)
    targets = [stored_probs[i] for i in index.tolist()]
    # Augmented views do not change the stored target: pass views that are pure noise.
    noise = torch.rand_like(views)
    expected = hand_kl(logits, targets, temperature, t2)
    assert rule.loss(logits, noise, labels, index, None).item() == pytest.approx(expected, rel=1e-5)
    # CutMix: the two stored targets are mixed by area.
    mixed, mix = fixed_mix(views)
    expected_mix = hand_kl(logits, mix_rows(targets, mix), temperature, t2)
    assert rule.loss(logits, mixed, labels, index, mix).item() == pytest.approx(expected_mix, rel=1e-5)
    assert abs(expected_mix - expected) > 1e-3


@pytest.mark.parametrize("t2", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_knowledge_distillation(batch, teacher, temperature, t2):
    stored, index, views, labels, logits = batch
    protocol = Protocol(regime="sl_kd", temperature=temperature, t2_scale=t2)
    rule = build_regime(protocol, teacher=teacher, stored_images=stored)
    expected = hand_kl(logits, hand_teacher_probs(teacher, views, temperature), temperature, t2)
    assert rule.loss(logits, views, labels, index, None).item() == pytest.approx(expected, rel=1e-5)
    # CutMix: the teacher sees the mixed image itself; nothing is mixed by area.
    mixed, mix = fixed_mix(views)
    expected_mix = hand_kl(logits, hand_teacher_probs(teacher, mixed, temperature), temperature, t2)
    assert rule.loss(logits, mixed, labels, index, mix).item() == pytest.approx(expected_mix, rel=1e-5)
    area_mixed = hand_kl(logits, mix_rows(hand_teacher_probs(teacher, views, temperature), mix), temperature, t2)
    assert abs(expected_mix - area_mixed) > 1e-4  # the teacher's view of the mix is not the area-mix of its views


@pytest.mark.parametrize("name", ["sl", "sl_kd"])
def test_t2_factor_is_exactly_t_squared(batch, teacher, name):
    stored, index, views, labels, logits = batch
    on = build_regime(Protocol(regime=name, temperature=4.0, t2_scale=True), teacher=teacher, stored_images=stored)
    off = build_regime(Protocol(regime=name, temperature=4.0, t2_scale=False), teacher=teacher, stored_images=stored)
    a, b = on.loss(logits, views, labels, index, None), off.loss(logits, views, labels, index, None)
    assert a.item() == pytest.approx(16 * b.item(), rel=1e-6)


def test_soft_loss_gradient_reaches_the_student_only(batch, teacher):
    stored, index, views, labels, logits = batch
    student_logits = logits.clone().requires_grad_(True)
    rule = build_regime(Protocol(regime="sl_kd", temperature=2.0), teacher=teacher, stored_images=stored)
    rule.loss(student_logits, views, labels, index, None).backward()
    # d/dz of T^2 * KL(p || softmax(z/T)) / B is T * (q - p) / B.
    p = torch.tensor(hand_teacher_probs(teacher, views, 2.0), dtype=torch.float64)
    q = torch.tensor(hand_softmax(logits, 2.0), dtype=torch.float64)
    assert torch.allclose(student_logits.grad.double(), 2.0 * (q - p) / B, atol=1e-6)
    assert all(p.grad is None for p in teacher.parameters())


def test_soft_regimes_need_a_teacher_and_names_are_checked(batch):
    stored = batch[0]
    for name in ("sl", "sl_kd"):
        with pytest.raises(ValueError):
            build_regime(Protocol(regime=name), stored_images=stored)
    with pytest.raises(StudyError):
        build_regime(Protocol(regime="soft"), stored_images=stored)


def test_mix_with_identity_partner_leaves_the_loss_unchanged(batch, teacher):
    stored, index, views, labels, logits = batch
    identity = Mix(torch.arange(B), 0.3)
    for name in ("hl", "sl"):
        rule = build_regime(Protocol(regime=name), teacher=teacher, stored_images=stored)
        plain = rule.loss(logits, views, labels, index, None).item()
        assert rule.loss(logits, views, labels, index, identity).item() == pytest.approx(plain, rel=1e-6)
