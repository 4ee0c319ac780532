"""Seeds trained as one vmapped model must match the same seeds trained one by one."""
from __future__ import annotations

import pytest
import torch

from study.core.augment import stitched_views
from study.core.batched import batching_pays, train_students
from study.core.protocol import Protocol
from study.core.train import train_student


@pytest.mark.parametrize("regime, cutmix_prob, views, augment", [
    ("hl", 0.0, None, "dataset"), ("sl_kd", 0.5, None, "dataset"), ("sl", 0.5, None, "dataset"),
    ("sl_kd", 0.5, stitched_views(2, flip=True), "dataset"), ("sl", 0.5, None, "dsa")])
def test_batched_seeds_match_one_by_one(digits, digits_teacher, regime, cutmix_prob, views, augment):
    g = torch.Generator().manual_seed(0)
    sets = []
    for _ in range(3):
        idx = torch.randperm(len(digits.train_y), generator=g)[:40]
        sets.append((digits.train_x[idx], digits.train_y[idx]))
    seeds = [3, 4, 5]
    protocol = Protocol(steps=60, batch_size=32, model_kwargs={"width": 16}, regime=regime, cutmix_prob=cutmix_prob,
                        augment=augment)
    kw = dict(teacher=digits_teacher.model, device="cpu", eval_points=3, views=views)
    alone = [train_student(x, y, digits, protocol, seed=s, **kw) for (x, y), s in zip(sets, seeds)]
    together = train_students(sets, seeds, digits, protocol, **kw)
    for a, b in zip(alone, together):
        assert b.loss_curve == pytest.approx(a.loss_curve, rel=1e-3, abs=1e-4)
        assert b.test_acc == pytest.approx(a.test_acc, abs=2 / len(digits.test_y))
        assert [s for s, _ in b.val_curve] == [s for s, _ in a.val_curve]
        assert b.flops == a.flops and b.samples_seen == a.samples_seen == 60 * 32
    assert len({round(r.test_acc, 6) for r in together}) > 1


def test_batched_training_refuses_unequal_sets(digits):
    with pytest.raises(ValueError):
        train_students([(digits.train_x[:10], digits.train_y[:10]), (digits.train_x[:12], digits.train_y[:12])],
                       [0, 1], digits, Protocol(steps=2), device="cpu")


def test_batching_is_chosen_where_it_was_measured_to_pay():
    assert not batching_pays("cpu") and batching_pays("cuda") and batching_pays("cuda:1")
