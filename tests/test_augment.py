"""Batched device augmentation: per-sample randomness, exact geometry, CutMix area bookkeeping."""
from __future__ import annotations

import math

import pytest
import torch

from study.core.augment import (
    augment_batch, crop_boxes, cutmix, patch_crop, patch_views, random_crop, random_flip, resized_crop,
    shuffle_patches, stitched_views,
)
from study.core.data import Augment
from study.core.seeding import generator


def images(b=32, c=3, h=12, w=10, seed=0):
    return torch.rand(b, c, h, w, generator=generator(seed))


def test_random_crop_keeps_shape_and_padding_zero_is_identity():
    x = images()
    for p in (1, 2, 4):
        assert random_crop(x, p, generator(p)).shape == x.shape
    assert torch.equal(random_crop(x, 0, generator(1)), x)


def test_random_crop_is_a_true_crop_with_per_sample_offsets():
    p = 2
    one = images(b=1, c=2, h=9, w=7)
    x = one.expand(64, -1, -1, -1).contiguous()  # the same image 64 times
    out = random_crop(x, p, generator(3))
    padded = torch.nn.functional.pad(one[0], (p,) * 4)
    h, w = x.shape[2:]
    offsets = []
    for view in out:
        match = [(oy, ox) for oy in range(2 * p + 1) for ox in range(2 * p + 1)
                 if torch.equal(view, padded[:, oy:oy + h, ox:ox + w])]
        assert match, "every output must be a crop of the zero-padded image"
        offsets.append(match[0])
    assert len(set(offsets)) >= 12  # 25 possible offsets, 64 draws: per-sample, not one crop per batch
    # Same generator seed, same crops; another seed, other crops.
    assert torch.equal(random_crop(x, p, generator(3)), out)
    assert not torch.equal(random_crop(x, p, generator(4)), out)


def test_random_flip_flips_about_half_per_sample():
    x = images(b=400)
    out = random_flip(x, generator(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all())  # each sample is exactly itself or its mirror
    assert 0.4 < flipped.float().mean().item() < 0.6
    assert torch.equal(random_flip(x, generator(0)), out)


@pytest.mark.parametrize("seed", range(20))
def test_cutmix_lam_equals_own_area_share(seed):
    b, h, w = 8, 16, 12
    # Sample i is filled with the value i, so every pixel says which image it came from.
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    mixed, mix = cutmix(x, generator(seed))
    assert mixed.shape == x.shape and 0.0 <= mix.lam <= 1.0
    assert sorted(mix.perm.tolist()) == list(range(b))
    for i in range(b):
        from_partner = (mixed[i] == mix.perm[i].item()).all(0)
        own = (mixed[i] == i).all(0)
        assert bool((from_partner | own).all())
        if mix.perm[i] != i:
            assert from_partner.sum().item() / (h * w) == pytest.approx(1 - mix.lam, abs=1e-12)
        # The pasted region is one axis-aligned box (the same for every sample).
        if from_partner.any() and mix.perm[i] != i:
            rows, cols = from_partner.any(1).nonzero(), from_partner.any(0).nonzero()
            box = from_partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert bool(box.all())


def test_cutmix_lam_spans_the_range():
    lams = [cutmix(images(b=4, h=32, w=32), generator(s))[1].lam for s in range(200)]
    assert min(lams) < 0.3 and max(lams) > 0.95
    assert 0.5 < sum(lams) / len(lams) < 0.85  # boxes clipped at the border make lam > Beta(1, 1) on average


def test_resized_crop_full_box_is_identity_and_boxes_are_valid():
    x = images(b=4, h=16, w=16)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(4, -1)
    assert torch.allclose(resized_crop(x, full), x, atol=1e-5)
    # A half-size box at the top-left corner, upsampled 2x: the top-left 8x8 block of each image.
    corner = torch.tensor([[0.25, 0.25, 0.5, 0.5]]).expand(4, -1)
    down = torch.nn.functional.avg_pool2d(resized_crop(x, corner, size=(8, 8)), 1)
    assert torch.allclose(down, x[:, :, :8, :8], atol=1e-5)
    boxes = crop_boxes(500, generator(0))
    cx, cy, bw, bh = boxes.unbind(1)
    assert bool(((cx - bw / 2 >= -1e-6) & (cx + bw / 2 <= 1 + 1e-6) & (cy - bh / 2 >= -1e-6)
                 & (cy + bh / 2 <= 1 + 1e-6)).all())
    assert (bw * bh).min() >= 0.08 * 0.7 and len(set(map(tuple, boxes.tolist()))) == 500


def test_augment_batch_maps_uint8_to_unit_floats_under_the_spec():
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, generator=generator(0))
    plain = augment_batch(x, Augment(), generator(0))
    assert plain.dtype == torch.float32 and torch.equal(plain, x.float() / 255)
    for spec in (Augment(crop_padding=2), Augment(flip=True), Augment(random_resized_crop=True, flip=True)):
        out = augment_batch(x, spec, generator(1))
        assert out.shape == (16, 1, 8, 8) and out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, plain)
        assert torch.equal(augment_batch(x, spec, generator(1)), out)


def tiles(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, f*f, C*h*w): each image's tiles, row by row."""
    b, c, h, w = x.shape
    t = x.unfold(2, h // factor, h // factor).unfold(3, w // factor, w // factor)  # (B, C, f, f, h, w)
    return t.permute(0, 2, 3, 1, 4, 5).reshape(b, factor * factor, -1)


@pytest.mark.parametrize("factor", [2, 4])
def test_shuffle_patches_keeps_each_images_multiset_of_tiles(factor):
    x = torch.rand(64, 3, 16, 16, generator=generator(0))
    out = shuffle_patches(x, factor, generator(1))
    before, after = tiles(x, factor), tiles(out, factor)
    for b in range(len(x)):
        # every tile of the view is one of the image's tiles, each used exactly once
        match = torch.cdist(after[b], before[b]).argmin(1)
        assert sorted(match.tolist()) == list(range(factor * factor))
        assert torch.equal(after[b], before[b][match])
    moved = [tuple(torch.cdist(after[b], before[b]).argmin(1).tolist()) for b in range(len(x))]
    # rows and columns are permuted independently, per sample: (f!)^2 arrangements, many of them drawn
    assert len(set(moved)) >= min(4, math.factorial(factor) ** 2 // 2) and moved.count(tuple(range(factor ** 2))) < 32
    assert torch.equal(shuffle_patches(x, factor, generator(1)), out)


def test_patch_crop_is_antialiased():
    """Shrinking a whole noise image f times must average every f x f block; one bilinear sample per output pixel
    reads only 2 x 2 of the f x f pixels and keeps much of the noise."""
    x = images(b=2, c=1, h=32, w=32)
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(2, -1)
    pooled = torch.nn.functional.avg_pool2d(x, 4)
    assert torch.allclose(patch_crop(x, full, 4), pooled, atol=1e-5)
    assert (resized_crop(x, full, (8, 8)) - pooled).abs().mean() > 0.05


def test_patch_views_are_tiles_on_a_mean_colour_canvas():
    x = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=generator(0))
    spec = patch_views(2, (0.08, 1.0), fill=(0.25,), flip=True)
    out = augment_batch(x, spec, generator(2))
    ring = out.clone()
    ring[:, :, 4:12, 4:12] = 0.25
    assert torch.equal(ring, torch.full_like(out, 0.25))
    assert out[:, :, 4:12, 4:12].std() > 0.1
    assert torch.equal(augment_batch(x, spec, generator(2)), out)


def test_stitched_views_shuffle_crop_and_flip_deterministically():
    x = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=generator(0))
    spec = stitched_views(2, flip=True)
    assert spec.shuffle_patches == 2 and spec.crop_scale == (0.5, 1.0) and spec.random_resized_crop and spec.flip
    out = augment_batch(x, spec, generator(3))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(augment_batch(x, spec, generator(3)), out)
    assert not torch.equal(out, augment_batch(x, Augment(random_resized_crop=True, flip=True), generator(3)))
