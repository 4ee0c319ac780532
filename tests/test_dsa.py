"""DSA against the released semantics (VICO-UoE/DatasetCondensation utils.py, strategy
color_crop_cutout_flip_scale_rotate, mode 'S'): each op's parameter range, Siamese views sharing parameters,
determinism under a seed, gradients through every op, and the training loop's use of it."""
from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from study.core.dsa import DSA, OPS, Draw, Settings, augment, draw
from study.core.errors import StudyError
from study.core.protocol import Protocol
from study.core.seeding import generator
from study.core.train import draw_views, training_views, batch_indices


def draws_by_op(n: int, size=(32, 32), seeds=range(60)) -> dict[str, list[Draw]]:
    by_op = defaultdict(list)
    for seed in seeds:
        d = draw(n, size, generator(seed))
        by_op[d.op].append(d)
    return by_op


def values(draws: list[Draw], i: int) -> torch.Tensor:
    return torch.cat([d.values[i] for d in draws])


def test_one_op_per_call_drawn_uniformly_from_the_six():
    counts = {op: len(ds) for op, ds in draws_by_op(1, seeds=range(1200)).items()}
    assert set(counts) == set(OPS)
    assert all(150 < c < 250 for c in counts.values()), counts  # 200 expected each


@pytest.mark.parametrize("size, shift, cut", [((32, 32), 4, 16), ((28, 28), 4, 14), ((64, 64), 8, 32)])
def test_each_ops_parameters_span_the_released_range(size, shift, cut):
    ops = draws_by_op(4000, size)
    for i in range(3):  # brightness, saturation, contrast draws: u in [0, 1)
        u = values(ops["color"], i)
        assert u.min() >= 0 and u.max() < 1 and u.min() < 0.01 and u.max() > 0.99
    for i in range(2):  # crop: int(0.125 * side + 0.5) pixels either way, every offset reachable
        assert set(values(ops["crop"], i).tolist()) == set(range(-shift, shift + 1))
    for i in range(2):  # cutout centre: randint(0, side + (1 - size % 2))
        assert set(values(ops["cutout"], i).tolist()) == set(range(size[i] + 1 - cut % 2))
    flip = values(ops["flip"], 0)
    assert 0.45 < (flip < 0.5).float().mean() < 0.55
    for i in range(2):  # x and y factors in [1/1.2, 1.2]
        f = values(ops["scale"], i)
        assert f.min() >= 1 / 1.2 and f.max() <= 1.2 and f.min() < 1 / 1.2 + 0.01 and f.max() > 1.19
    angle = values(ops["rotate"], 0)
    assert angle.abs().max() <= math.radians(15) and angle.abs().max() > math.radians(14.9)


def img(b=1, c=3, h=8, w=8, seed=0):
    return torch.rand(b, c, h, w, generator=generator(seed))


def test_crop_translates_with_zero_fill():
    x = img()
    out = augment(x, Draw("crop", (torch.tensor([2]), torch.tensor([-1]))))
    expect = torch.zeros_like(x)
    expect[:, :, :6, 1:] = x[:, :, 2:, :7]  # out[i, j] = x[i + 2, j - 1]
    assert torch.equal(out, expect)


def test_cutout_zeroes_a_half_side_square_clipped_to_the_image():
    x = img(h=32, w=32) + 1  # no zero pixels of its own
    inside = augment(x, Draw("cutout", (torch.tensor([16]), torch.tensor([20]))))
    assert (inside[0, 0] == 0).sum() == 16 * 16
    assert (inside[0, :, 8:24, 12:28] == 0).all()
    corner = augment(x, Draw("cutout", (torch.tensor([0]), torch.tensor([32]))))
    assert (corner[0, 0] == 0).sum() == 8 * 8 and (corner[0, :, :8, 24:] == 0).all()


def test_flip_and_colour_follow_the_released_formulas():
    x = img(b=2)
    flipped = augment(x, Draw("flip", (torch.tensor([0.3, 0.7]),)))
    assert torch.equal(flipped[0], x[0].flip(2)) and torch.equal(flipped[1], x[1])
    # saturation factor 2 * 0.5 = 1 and contrast factor 0.5 + 0.5 = 1 leave the brightness shift alone
    shifted = augment(x, Draw("color", (torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))))
    assert torch.allclose(shifted, x + torch.tensor([0.4, -0.4]).view(2, 1, 1, 1), atol=1e-6)
    grey = augment(x, Draw("color", (torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.5]))))
    assert torch.allclose(grey, x.mean(1, keepdim=True).expand_as(x), atol=1e-6)  # saturation 0: channel mean
    flat = augment(x, Draw("color", (torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]), torch.tensor([-0.5, -0.5]))))
    assert torch.allclose(flat, x.mean((1, 2, 3), keepdim=True).expand_as(x), atol=1e-6)  # contrast 0: image mean


def test_warps_are_identity_at_unit_parameters_and_rotate_anticlockwise():
    x = img(h=9, w=9)
    assert torch.allclose(augment(x, Draw("scale", (torch.ones(1), torch.ones(1)))), x, atol=1e-6)
    assert torch.allclose(augment(x, Draw("rotate", (torch.zeros(1),))), x, atol=1e-6)
    dot = torch.zeros(1, 1, 9, 9)
    dot[0, 0, 4, 8] = 1  # right edge, middle row
    turned = augment(dot, Draw("rotate", (torch.tensor([math.pi / 2]),)))
    assert turned[0, 0].argmax() == 0 * 9 + 4  # top edge, middle column: "90: anticlockwise" as the release says
    zoomed_out = augment(torch.ones(1, 1, 16, 16), Draw("scale", (torch.tensor([1.2]), torch.tensor([1.2]))))
    assert zoomed_out[0, 0, 8, 8] == pytest.approx(1) and zoomed_out[0, 0, 0, 0] < 1  # factor > 1 shrinks: zero rim


def test_siamese_draw_gives_real_and_synthetic_batches_the_same_parameters():
    one = img(b=1, c=3, h=16, w=16, seed=1)
    real, syn = one.expand(5, -1, -1, -1), one.expand(3, -1, -1, -1).clone().requires_grad_()
    dsa = DSA(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    seen = set()
    for seed in range(40):
        d = dsa.draw(1, (16, 16), generator(seed))
        seen.add(d.op)
        both = torch.cat([dsa.apply(real, d), dsa.apply(syn, d)])
        assert torch.allclose(both, both[:1].expand_as(both), atol=1e-6), d.op
    assert seen == set(OPS)
    # per-image draws (a student's batch) give copies of one image different views
    per_image = dsa.apply(one.expand(64, -1, -1, -1), dsa.draw(64, (16, 16), generator(7)))
    assert len({tuple(v.flatten().tolist()) for v in per_image}) > 1


def test_same_seed_same_views_other_seed_other_views():
    x = (img(b=16, h=16, w=16) * 255).to(torch.uint8)
    dsa = DSA(mean=(0.5,) * 3, std=(0.25,) * 3)
    a = [dsa.views(x, g) for g in [generator(3)] for _ in range(6)]
    b = [dsa.views(x, g) for g in [generator(3)] for _ in range(6)]
    c = [dsa.views(x, g) for g in [generator(4)] for _ in range(6)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_fill_is_the_mean_colour_as_in_the_releases_normalised_space():
    dsa = DSA(mean=(0.5, 0.25, 0.75), std=(0.2, 0.2, 0.2))
    out = dsa.apply(torch.ones(1, 3, 8, 8), Draw("cutout", (torch.tensor([4]), torch.tensor([4]))))
    assert torch.allclose(out[0, :, 4, 4], torch.tensor([0.5, 0.25, 0.75]))


@pytest.mark.parametrize("op", OPS)
def test_gradients_flow_through_every_op(op):
    dsa = DSA(mean=(0.5,) * 3, std=(0.25,) * 3)
    for seed in range(200):
        d = dsa.draw(4, (16, 16), generator(seed))
        if d.op == op:
            break
    x = img(b=4, h=16, w=16).requires_grad_()
    dsa.apply(x, d).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_a_dsa_protocol_trains_on_dsa_views_and_the_dataset_protocol_on_its_own(digits):
    dsa_spec = training_views(Protocol(augment="dsa"), digits, None)
    assert dsa_spec == DSA(digits.mean, digits.std)
    assert training_views(Protocol(), digits, None) is digits.augment
    x = digits.train_x[:32]
    _, views, _ = draw_views(x, batch_indices(32, 32, generator(0)), dsa_spec, generator(0), 0.0)
    assert views.shape == x.shape and views.dtype == torch.float32


def test_an_unknown_augment_is_one_sentence():
    from study.runs.config import TrialConfig
    from study.runs.validate import validate_trial

    cfg = TrialConfig.from_dict({"dataset": "digits", "selector": "random", "ipc": 5, "augment": "autoaugment"})
    with pytest.raises(StudyError, match="augment must be 'dataset'.*'dsa'.*not 'autoaugment'"):
        validate_trial(cfg)
