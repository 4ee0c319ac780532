"""RDED: a scripted observer with known per-crop losses pins down selection, ordering and stitching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.core.augment import crop_boxes, patch_crop, resized_crop, stitched_views
from study.core.cache import Cache
from study.core.data import Augment, Dataset
from study.core.errors import StudyError
from study.core.protocol import Protocol
from study.selection import SelectionContext, build_selector
from study.selection.rded import crop_candidates, default_factor, rded_patches, released_order, stitch
from study.core.seeding import generator


def expected_crops(images: torch.Tensor, boxes: torch.Tensor, factor: int, view: str, fill: float = 0.0):
    """Patches and observer views computed independently of the RDED code path, one image at a time."""
    n, k = boxes.shape[:2]
    H, W = images.shape[-2:]
    h, w = H // factor, W // factor
    patches, views = [], []
    for i in range(n):
        for j in range(k):
            x = images[i:i + 1].float() / 255
            b = boxes[i, j][None]
            p = resized_crop(x, b, (h, w), supersample=factor)[0]
            patches.append(p)
            if view == "resize":
                views.append(resized_crop(x, b, (H, W))[0])
            else:
                top, left = (H - h) // 2, (W - w) // 2
                views.append(F.pad(p, (left, W - w - left, top, H - h - top), value=fill))
    return torch.stack(patches).view(n, k, *patches[0].shape), torch.stack(views)


class ScriptedObserver(nn.Module):
    """Recognises each crop view by nearest neighbour and returns logits whose cross-entropy rises with its score."""

    def __init__(self, views: torch.Tensor, scores: torch.Tensor, label: int, num_classes: int = 10):
        super().__init__()
        self.views, self.scores, self.label, self.num_classes = views.flatten(1), scores, label, num_classes
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        idx = torch.cdist(x.flatten(1).float(), self.views).argmin(1)
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, self.label] = -self.scores[idx]
        return logits


@pytest.mark.parametrize("view", ["pad", "resize"])
def test_rded_keeps_the_lowest_loss_crops_in_the_documented_layout(view):
    g = generator(7)
    n, k, f, ipc, label = 6, 3, 2, 1, 4
    images = torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
    boxes = crop_boxes(n * k, g, scale=(0.2, 0.6)).view(n, k, 4)
    patches, views = expected_crops(images, boxes, f, view, fill=0.3)
    scores = torch.randperm(n * k, generator=g).float() / 4  # distinct, known per-crop losses (monotone in score)
    observer = ScriptedObserver(views, scores, label)
    labels = torch.full((n,), label)
    sources = torch.arange(100, 100 + n)

    stitched, chosen = rded_patches(images, labels, observer, ipc, fill=(0.3,), sources=sources, factor=f,
                                    boxes=boxes, score_view=view)

    table = scores.view(n, k)
    best_j = table.argmin(1)  # the lowest-loss crop of each image
    best = table.gather(1, best_j[:, None]).squeeze(1)
    ranked = best.argsort()[: ipc * f * f]  # then the ipc*f^2 lowest of those, ascending
    assert chosen.source.tolist() == (100 + ranked).tolist()
    assert torch.equal(chosen.boxes, boxes[ranked, best_j[ranked]])
    assert torch.all(chosen.loss[1:] >= chosen.loss[:-1])
    # layout: slot p of image 0 sits at row p // f, column p % f
    assert stitched.shape == (ipc, 1, 16, 16)
    for p, i in enumerate(ranked.tolist()):
        r, c = divmod(p, f)
        tile = stitched[0, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
        assert torch.allclose(tile, patches[i, best_j[i]], atol=1e-5)
    # never an image's second crop while the easiest crops come one per image
    assert len(set(chosen.source.tolist())) == len(chosen.source)


def test_small_classes_take_several_crops_per_image_and_too_few_fail():
    g = generator(3)
    n, k, f = 3, 3, 2
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    boxes = crop_boxes(n * k, g, scale=(0.3, 0.9)).view(n, k, 4)
    _, views = expected_crops(images, boxes, f, "pad")
    scores = torch.randperm(n * k, generator=g).float()
    observer = ScriptedObserver(views, scores, 0)
    stitched, chosen = rded_patches(images, torch.zeros(n, dtype=torch.long), observer, 2, fill=(0.0,), factor=f,
                                    boxes=boxes)
    assert stitched.shape == (2, 1, 8, 8)
    # 8 patches from 3 images x 3 crops: everything but the single highest-loss crop, ascending slot by slot
    ranked = chosen.loss.view(2, 4).T.reshape(-1)
    assert ranked.tolist() == sorted(ranked.tolist())
    expected = F.cross_entropy(observer(views), torch.zeros(n * k, dtype=torch.long), reduction="none")
    assert torch.allclose(ranked, expected.sort().values[:8])
    with pytest.raises(StudyError, match="raise k or m"):
        rded_patches(images, torch.zeros(n, dtype=torch.long), observer, 3, fill=(0.0,), factor=f, boxes=boxes)


def test_stitch_layout_is_row_major():
    tiles = torch.arange(8).float().view(8, 1, 1, 1).expand(8, 1, 2, 2)
    out = stitch(tiles, 2)
    assert out.shape == (2, 1, 4, 4)
    assert out[0, 0, ::2, ::2].tolist() == [[0, 1], [2, 3]]
    assert out[1, 0, ::2, ::2].tolist() == [[4, 5], [6, 7]]


class BrightnessObserver(nn.Module):
    """Scripted observer for whole-dataset runs: the brighter the view, the lower its loss for every class."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None].expand(-1, 10) * torch.arange(1, 11.0)


def synthetic_dataset(size: int, n_per_class: int = 12, channels: int = 3) -> Dataset:
    g = generator(size)
    n = 10 * n_per_class
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(10).repeat_interleave(n_per_class)
    stats = (0.5,) * channels
    return Dataset("fake", [str(i) for i in range(10)], x, y, x[:10], y[:10], x[:10], y[:10], stats, stats, Augment())


def context(data, tmp_path) -> SelectionContext:
    teacher = type("T", (), {"model": BrightnessObserver()})()
    return SelectionContext(data, Cache(tmp_path), "cpu", Protocol(), lambda: teacher)


def test_rded_selector_shapes_labels_provenance_and_seeding(tmp_path):
    data = synthetic_dataset(28)
    ctx = context(data, tmp_path)
    ipc = 2
    sel = build_selector("rded", m=8, k=3, factor=2).select(ctx, ipc, seed=5)
    f = sel.provenance["factor"]
    assert f == 2 and default_factor(28) == 1
    assert sel.views == stitched_views(2, flip=False) and sel.provenance["views"]["shuffle_patches"] == 2
    assert sel.is_synthetic and sel.indices is None
    assert sel.images.dtype == torch.uint8 and sel.images.shape == (10 * ipc, 3, 28, 28)
    assert sel.labels.tolist() == np.repeat(np.arange(10), ipc).tolist()
    src = torch.tensor(sel.provenance["patch_source"])
    assert src.shape == (10 * ipc, f * f)
    assert torch.equal(data.train_y[src], sel.labels[:, None].expand(-1, f * f))  # every patch from its own class
    boxes = torch.tensor(sel.provenance["patch_box"])
    assert boxes.shape == (10 * ipc, f * f, 4) and boxes.min() >= 0 and boxes.max() <= 1
    loss = torch.tensor(sel.provenance["patch_loss"]).view(10, ipc, f * f).transpose(1, 2).reshape(10, -1)
    assert torch.all(loss[:, 1:] >= loss[:, :-1])  # read slot by slot, then image by image: easiest first
    # each tile is the recorded crop of the recorded source (up to uint8 and box rounding)
    tile = patch_crop(data.train_x[src[3, 2]][None].float() / 255, boxes[3, 2][None], 2)[0]
    assert (sel.images[3, :, 14:, :14].float() / 255 - tile).abs().max() < 4 / 255
    assert sel.provenance["params"]["m"] == 8 and sel.provenance["seed"] == 5
    again = build_selector("rded", m=8, k=3, factor=2).select(ctx, ipc, seed=5)
    other = build_selector("rded", m=8, k=3, factor=2).select(ctx, ipc, seed=6)
    assert torch.equal(again.images, sel.images)
    assert not torch.equal(other.images, sel.images)


def test_rded_defaults_to_whole_image_crops_on_small_images(tmp_path):
    data = synthetic_dataset(8, channels=1)
    sel = build_selector("rded", k=2).select(context(data, tmp_path), 3, seed=0)
    assert sel.provenance["factor"] == 1 and sel.images.shape == (30, 1, 8, 8)
    assert np.array(sel.provenance["patch_source"]).shape == (30, 1)
    assert sel.views is None and sel.provenance["views"] is None  # whole images train under the dataset's views


@pytest.mark.parametrize("size, factor", [(8, 1), (28, 1), (32, 1), (64, 1), (127, 1), (128, 2), (224, 2)])
def test_factor_rule_follows_the_released_scripts(size, factor):
    assert default_factor(size) == factor


def test_released_slot_order_against_a_hand_written_layout():
    """12 flat grey images ranked by a scripted observer; image i's slot p must hold the (p * 3 + i)-th easiest."""
    ipc, f, n = 3, 2, 12
    levels = torch.arange(n) * 20 + 10
    images = levels.view(n, 1, 1, 1).expand(n, 1, 8, 8).to(torch.uint8)
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]).expand(n, 1, 4)
    rank = torch.tensor([5, 0, 9, 2, 11, 7, 1, 10, 3, 6, 8, 4])  # image j is the rank[j]-th easiest
    _, views = expected_crops(images, boxes, f, "pad", fill=0.5)
    observer = ScriptedObserver(views, rank.float(), label=0)
    stitched, chosen = rded_patches(images, torch.zeros(n, dtype=torch.long), observer, ipc, fill=(0.5,),
                                    factor=f, boxes=boxes)
    by_rank = rank.argsort()  # by_rank[r] = the image ranked r
    layout = [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]  # ranks in slots (0,0) (0,1) (1,0) (1,1) of each image
    assert released_order(ipc, f).view(ipc, f * f).tolist() == layout
    for i, ranks in enumerate(layout):
        tiles = stitched[i, 0].unfold(0, 4, 4).unfold(1, 4, 4).reshape(f * f, 16)
        want = levels[by_rank[torch.tensor(ranks)]].float() / 255
        assert torch.allclose(tiles, want[:, None].expand(-1, 16), atol=1e-5), (i, tiles[:, 0], want)
        assert chosen.source.view(ipc, f * f)[i].tolist() == by_rank[torch.tensor(ranks)].tolist()


def test_candidate_crops_are_square_and_padded_in_the_mean_colour(tmp_path):
    data = synthetic_dataset(32)
    for factor in (1, 2):
        sel = build_selector("rded", m=12, k=4, factor=factor).select(context(data, tmp_path), 2, seed=1)
        boxes = torch.tensor(sel.provenance["patch_box"]).view(-1, 4)
        assert torch.allclose(boxes[:, 2], boxes[:, 3], atol=2e-4)
        assert boxes[:, 2].pow(2).min() >= 0.08 - 1e-3 and boxes[:, 2].max() <= 1
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=generator(0))
    fill = (0.25, 0.5, 0.75)
    patches, views = crop_candidates(x, crop_boxes(6, generator(1), ratio=(1, 1)).view(2, 3, 4), 2, fill)
    assert patches.shape == (6, 3, 8, 8) and views.shape == (6, 3, 16, 16)
    assert torch.equal(views[:, :, 4:12, 4:12], patches)
    ring = views.clone()
    ring[:, :, 4:12, 4:12] = torch.tensor(fill).view(1, 3, 1, 1)
    assert torch.allclose(ring, torch.tensor(fill).view(1, 3, 1, 1).expand_as(ring))


@pytest.mark.parametrize("params", [{"score_view": "blur"}, {"k": 0}, {"factor": 0}, {"scale": (0.5, 0.2)}])
def test_bad_rded_parameters_fail_in_one_sentence(params):
    with pytest.raises(StudyError):
        build_selector("rded", **params)


def test_factor_must_divide_the_image(tmp_path):
    with pytest.raises(StudyError, match="cannot be split"):
        build_selector("rded", factor=3).select(context(synthetic_dataset(8, channels=1), tmp_path), 1, 0)


def test_synthetic_selection_saves_a_png_grid(tmp_path):
    artifacts = pytest.importorskip("study.selection.artifacts")
    import json

    from PIL import Image

    data = synthetic_dataset(28)
    sel = build_selector("rded", m=6, k=2).select(context(data, tmp_path), 2, seed=0)
    files = artifacts.save_selection_artifacts(sel, data, tmp_path / "sel", per_class=2)
    grid = next(f for f in files if f.suffix == ".png")
    with Image.open(grid) as im:
        assert im.size == (2 * 29 + 1, 10 * 29 + 1)  # one row per class, ipc columns, 1-px padding
    prov = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert prov["patch_source"] == sel.provenance["patch_source"]  # provenance is plain JSON


@pytest.mark.slow
def test_f2_end_to_end_on_a_128px_image_folder_from_fashion_mnist(tmp_path, monkeypatch, one_thread):
    """RDED on 128-px garments: the rule picks f=2, the set carries its stitched views, a student trains on them."""
    from PIL import Image

    import study.core.data as data_module
    from study.core.data import load_dataset
    from study.core.teacher import TeacherSpec, get_teacher
    from study.core.train import train_student

    if not data_module.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    fm = load_dataset("fashion-mnist")
    for c in range(10):
        folder = tmp_path / "fm128" / f"{c:02d}"
        folder.mkdir(parents=True)
        for j, i in enumerate(torch.nonzero(fm.train_y == c).flatten()[:40].tolist()):
            Image.fromarray(fm.train_x[i, 0].numpy()).resize((128, 128), Image.BILINEAR).save(folder / f"{j}.png")
    monkeypatch.setattr(data_module, "IMAGEFOLDER_SIZE", 128)
    data = load_dataset(f"imagefolder:{tmp_path / 'fm128'}")
    assert data.image_shape == (3, 128, 128)
    cache = Cache(tmp_path / "cache")
    teacher = get_teacher(data, TeacherSpec(model_kwargs={"width": 16}, epochs=8, batch_size=32), cache, "cpu")
    ctx = SelectionContext(data, cache, "cpu", Protocol(), lambda: teacher)
    sel = build_selector("rded", m=20, k=3).select(ctx, 2, seed=0)
    assert sel.provenance["factor"] == 2 and sel.images.shape == (20, 3, 128, 128)
    assert sel.views == stitched_views(2, flip=True)
    src = torch.tensor(sel.provenance["patch_source"])
    assert torch.equal(data.train_y[src], sel.labels[:, None].expand(-1, 4))
    protocol = Protocol(steps=150, batch_size=20, model_kwargs={"width": 16}, regime="sl_kd")
    result = train_student(sel.images, sel.labels, data, protocol, teacher=teacher.model, seed=0, device="cpu",
                           views=sel.views, eval_points=1)
    print(f"128-px FM: teacher {teacher.test_acc:.3f}, rded f=2 ipc 2 sl_kd student {result.test_acc:.3f}")
    assert teacher.test_acc > 0.5
    assert result.test_acc > 0.45  # chance is 0.1; measured 0.69 (teacher 0.74)
