"""external:PATH and study.export on real digits: round trip, accepted encodings, and every refusal in one sentence."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from study.runs.config import TrialConfig
from study.core.errors import StudyError
from study.export import main as export_main
from study.runs.record import success_record
from study.selection import build_selector
from study.runs.record import flatten
from study.selection.external_formats import compute_content_hash
from study.runs.trial import context_for, get_selection, run_trial

SMALL = dict(steps=30, seeds=1, model_kwargs={"width": 16})


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and not re.search(r"[.!?]\s+[A-Z]", message)



@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """Repeat 0 of random IPC 3 on digits, made through the trial machinery, with its cache folder."""
    cache = tmp_path_factory.mktemp("ext-cache")
    cfg = TrialConfig.from_dict(dict(selector="random", ipc=3, **SMALL))
    ctx = context_for(cfg, cache, "cpu")
    return cfg, cache, ctx, get_selection(ctx, build_selector("random"), cfg, 0)


def export(tmp_path, cache, name, *extra):
    out = tmp_path / name
    export_main(["--dataset", "digits", "--selector", "random", "--ipc", "3", "--seed", "0", "--out", str(out),
                 "--cache-dir", str(cache), *extra])
    return out


@pytest.mark.parametrize("name", ["set.pt", "set.npz", "tree"])
def test_export_writes_the_selection_and_a_card(tmp_path, original, name):
    _, cache, ctx, selection = original
    out = export(tmp_path, cache, name)
    card = json.loads((out / "card.json" if out.is_dir() else out.with_suffix(".json")).read_text())
    assert {k: card[k] for k in ("dataset", "selector", "params", "ipc", "seed", "family")} == {
        "dataset": "digits", "selector": "random", "params": {}, "ipc": 3, "seed": 0, "family": "coreset"}
    assert card["content_hash"] == compute_content_hash(out)
    assert card["indices"] == selection.indices.tolist()
    back = build_selector(f"external:{out}").select(ctx, 3, 0)
    assert torch.equal(back.images, selection.images) and torch.equal(back.labels, selection.labels)
    assert back.provenance["content_hash"] == card["content_hash"]
    assert back.provenance["source"]["selector"] == "random"


def test_round_trip_trains_to_the_same_accuracy(tmp_path, original):
    cfg, cache, _, _ = original
    out = export(tmp_path, cache, "set.pt")
    first = run_trial(cfg, cache, "cpu")
    again = run_trial(TrialConfig.from_dict(dict(selector=f"external:{out}", ipc=3, **SMALL)), cache, "cpu")
    assert again.per_seed[0]["train_seed"] == first.per_seed[0]["train_seed"]
    assert again.accuracies == first.accuracies
    assert again.per_seed[0]["loss_curve"] == first.per_seed[0]["loss_curve"]
    params = flatten(success_record(again, {})["config"])  # what MLflow and results.csv record
    assert params["selector_params.content_hash"] == compute_content_hash(out)


def save_pt(path, images, labels, **extra):
    torch.save({"images": images, "labels": labels, **extra}, path)
    return path


def test_float_layouts_and_ranges_are_detected(tmp_path, original):
    _, _, ctx, selection = original
    x, y = selection.images, selection.labels
    unit = x.float() / 255
    mean = torch.tensor(ctx.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(ctx.data.std).view(1, -1, 1, 1)
    cases = {
        "unit-nhwc.pt": (unit.permute(0, 2, 3, 1), "float [0, 1]", "NHWC"),
        "255-nchw.npz": ((unit * 255).numpy(), "float [0, 255]", "NCHW"),
        "normalised.pt": ((unit - mean) / std, "normalised with digits's mean/std", "NCHW"),
        "three-dim.pt": (x[:, 0], "uint8 [0, 255]", "NHW (one channel)"),
    }
    for name, (images, rule, layout) in cases.items():
        path = tmp_path / name
        if name.endswith(".npz"):
            np.savez(path, images=images, labels=y.numpy())
        else:
            save_pt(path, images, y)
        got = build_selector(f"external:{path}").select(ctx, 3, 0)
        assert (got.provenance["value_range"], got.provenance["layout"]) == (rule, layout), name
        assert (got.images.int() - x.int()).abs().max() <= 1, name
    stated = build_selector(f"external:{save_pt(tmp_path / 'own.pt', unit * 2 - 1, y, mean=[.5], std=[.5])}")
    assert (stated.select(ctx, 3, 0).images.int() - x.int()).abs().max() <= 1


def test_resize_only_when_asked(tmp_path, original):
    _, _, ctx, selection = original
    big = torch.nn.functional.interpolate(selection.images.float(), size=(16, 16), mode="nearest").to(torch.uint8)
    path = save_pt(tmp_path / "big.pt", big, selection.labels)
    with pytest.raises(StudyError, match="are 16x16 but digits's are 8x8; pass resize=True"):
        build_selector(f"external:{path}").select(ctx, 3, 0)
    got = build_selector(f"external:{path}", resize=True).select(ctx, 3, 0)
    assert got.images.shape == selection.images.shape and got.provenance["resized_from"] == [16, 16]


def test_a_changed_file_is_a_new_selection_and_a_pinned_hash_is_enforced(tmp_path, original):
    _, _, ctx, selection = original
    path = save_pt(tmp_path / "moving.pt", selection.images, selection.labels)
    cfg = TrialConfig.from_dict(dict(selector=f"external:{path}", ipc=3, **SMALL))
    before = get_selection(ctx, build_selector(cfg.selector), cfg, 0)
    save_pt(path, 255 - selection.images, selection.labels)
    after = get_selection(ctx, build_selector(cfg.selector), cfg, 0)  # not the cached, stale set
    assert torch.equal(after.images, 255 - selection.images)
    assert before.provenance["content_hash"] != after.provenance["content_hash"]
    with pytest.raises(StudyError, match="has changed since its hash was pinned") as err:
        build_selector(cfg.selector, content_hash=before.provenance["content_hash"])
    assert one_sentence(str(err.value))


def folder_with_bad_png(root):
    from PIL import Image

    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / str(c) / "a.png")
    (root / "3" / "b.png").write_bytes(b"not a png at all")
    return root


def malformed(tmp_path, kind: str, x: torch.Tensor, y: torch.Tensor):
    """A path to a broken set of the given kind, and the start of the sentence that must refuse it."""
    p = tmp_path / f"{kind}.pt"
    if kind == "class-count":
        keep = y < 5
        return save_pt(p, x[keep], y[keep]), "holds images of 5 classes but digits has 10"
    if kind == "declared-classes":
        return save_pt(p, x, y, classes=[str(i) for i in range(100)]), "has 100 classes but digits has 10"
    if kind == "class-folders":
        for c in range(7):
            (tmp_path / "tree" / str(c)).mkdir(parents=True)
        return tmp_path / "tree", "has 7 class folders but digits has 10"
    if kind == "shape":
        return save_pt(p, x.repeat(1, 1, 2, 2), y), "are 16x16 but digits's are 8x8"
    if kind == "channels":
        return save_pt(p, x.repeat(1, 3, 1, 1), y), "have 3 channel(s) but digits's have 1"
    if kind == "labels":
        return save_pt(p, x, torch.where(y == 9, 10, y)), "run from 0 to 10, outside 0..9"
    if kind == "negative-labels":
        return save_pt(p, x, y - 1), "run from -1 to 8"
    if kind == "soft-labels":
        return save_pt(p, x, torch.nn.functional.one_hot(y, 10).float()), "looks like soft labels"
    if kind == "label-count":
        return save_pt(p, x, y[:-1]), "holds 30 images but 29 labels"
    if kind == "unequal":
        return save_pt(p, x[1:], y[1:]), "holds an unequal number of images per class"
    if kind == "ipc":
        return save_pt(p, x[::3], y[::3]), "so its IPC is 1, but the study asks for IPC 3"
    if kind == "ambiguous-range":
        return save_pt(p, x.float() / 255 * 1.4, y), "which is clearly neither [0, 1], [0, 255]"
    if kind == "nan":
        return save_pt(p, torch.full(x.shape, float("nan")), y), "contain NaN or infinite values"
    if kind == "unreadable-pt":
        p.write_bytes(b"\x00garbage, not a torch file")
        return p, "could not be read as a PyTorch .pt file"
    if kind == "unreadable-npz":
        q = tmp_path / "bad.npz"
        q.write_bytes(b"PK but not really a zip")
        return q, "could not be read as a NumPy .npz archive"
    if kind == "unreadable-image":
        return folder_with_bad_png(tmp_path / "pngs"), "could not be read as an image"
    if kind == "missing-key":
        torch.save({"pixels": x, "labels": y}, p)
        return p, "has no images"
    if kind == "wrong-suffix":
        q = tmp_path / "set.h5"
        q.write_bytes(b"hdf5?")
        return q, "is neither a .pt / .npz file nor a folder"
    raise AssertionError(kind)


KINDS = ["class-count", "declared-classes", "class-folders", "shape", "channels", "labels", "negative-labels",
         "soft-labels", "label-count", "unequal", "ipc", "ambiguous-range", "nan", "unreadable-pt", "unreadable-npz",
         "unreadable-image", "missing-key", "wrong-suffix"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_malformed_sets_are_refused_before_training_in_one_sentence(tmp_path, original, kind):
    """The trial asks for ten million steps: getting the error back at all shows no training started."""
    _, cache, _, selection = original
    path, expected = malformed(tmp_path, kind, selection.images, selection.labels)
    cfg = TrialConfig.from_dict(dict(selector=f"external:{path}", ipc=3, steps=10_000_000, seeds=1,
                                     model_kwargs={"width": 16}))
    with pytest.raises(StudyError) as err:
        run_trial(cfg, cache, "cpu")
    message = str(err.value)
    assert expected in message, message
    assert one_sentence(message), message


def test_missing_path_and_bad_parameters_fail_when_the_selector_is_built(tmp_path):
    for name, params, expected in [(f"external:{tmp_path / 'nope.pt'}", {}, "does not exist"),
                                   ("external", {}, "needs a path"),
                                   (f"external:{tmp_path}", {"value_range": "0-1"}, "value_range must be one of"),
                                   (f"external:{tmp_path}", {"layout": "chw"}, "layout must be one of")]:
        with pytest.raises(StudyError, match=expected) as err:
            build_selector(name, **params)
        assert one_sentence(str(err.value))


def test_foreign_image_folder_by_class_name(tmp_path, original):
    """A tree another tool wrote: class-named folders, arbitrary file names, read class by class in name order."""
    from PIL import Image

    _, _, ctx, selection = original
    for i, (img, label) in enumerate(zip(selection.images, selection.labels.tolist())):
        folder = tmp_path / "foreign" / ctx.data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"img_{i:03d}.png")
    got = build_selector(f"external:{tmp_path / 'foreign'}").select(ctx, 3, 0)
    assert torch.equal(got.images, selection.images) and torch.equal(got.labels, selection.labels)
    assert got.provenance["label_mapping"] == "folder names = dataset class names"
    assert build_selector(f"external:{tmp_path / 'foreign'}").family == "dd"  # no card: assumed distilled
