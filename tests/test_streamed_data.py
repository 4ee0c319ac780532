"""File-backed data and streamed passes: the same numbers as in memory, only the subset decoded, bad files handled.

The tree is 1,200 Fashion-MNIST training and 300 test images written as 28-px greyscale PNGs, so decoding
them gives back the exact pixels (as three equal channels), and an in-memory copy of the same set is the
reference for every number the streamed path computes.
"""
from __future__ import annotations

import contextlib
import shutil
from collections import Counter

import numpy as np
import pytest
import ray
import torch

import study.core.data
from study.core import images as images_mod
from study.core.cache import Cache
from study.core.data import FASHION_CLASSES, DEBIAN_FASHION_MNIST, Augment, assemble, load_dataset
from study.core.errors import StudyError
from study.core.evaluate import accuracy, predict_features, predict_logits
from study.core.images import FileImages
from study.core.models import create_model, model_for
from study.core.protocol import Protocol, TeacherSpec
from study.core.seeding import generator
from study.core.teacher import Teacher, get_teacher, teacher_outputs
from study.core.tree_pass import prepare_tree
from study.runs.config import TrialConfig
from study.runs.trial import cached_dataset, run_trial
from study.selection import SelectionContext, build_selector
from study.selection.rded import rded_patches, to_uint8
from study.selection.scores import compute_scores, uncertainty

N_TRAIN, N_TEST, SIDE = 1200, 300, 28
CLASSES = [c.replace("/", "-") for c in FASHION_CLASSES]


def fashion_arrays(n_train: int, n_test: int):
    from study.core.data import find_idx_files, read_idx

    files = find_idx_files([DEBIAN_FASHION_MNIST])
    if files is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    arrays = {k: read_idx(p) for k, p in files.items()}
    return (arrays["train_x"][:n_train], arrays["train_y"][:n_train].astype(np.int64),
            arrays["test_x"][:n_test], arrays["test_y"][:n_test].astype(np.int64))


def write_split(folder, x, y):
    """PNG files in ImageFolder's order: class folders sorted by name, files by number."""
    from PIL import Image

    order = []
    for c in sorted(range(len(CLASSES)), key=lambda c: CLASSES[c]):
        (folder / CLASSES[c]).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(y == c):
            Image.fromarray(x[i]).save(folder / CLASSES[c] / f"{i:05d}.png")
            order.append(i)
    return np.array(order)


def in_memory(x, y, order):
    """The images a decoder gives for the files at ``order``, with ImageFolder's (sorted-name) class numbers."""
    rank = {c: r for r, c in enumerate(sorted(range(len(CLASSES)), key=lambda c: CLASSES[c]))}
    images = torch.from_numpy(x[order]).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return images, torch.as_tensor([rank[c] for c in y[order]])


@pytest.fixture(scope="module")
def fm_tree(tmp_path_factory):
    tx, ty, sx, sy = fashion_arrays(N_TRAIN, N_TEST)
    root = tmp_path_factory.mktemp("fm-tree")
    train_order = write_split(root / "train", tx, ty)
    test_order = write_split(root / "val", sx, sy)
    return root, in_memory(tx, ty, train_order), in_memory(sx, sy, test_order)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.fixture
def side(monkeypatch):
    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", SIDE)


@pytest.fixture(params=["in_process", pytest.param("ray_data", marks=pytest.mark.slow)])
def passes(request):
    """Where full-set passes run: in this process, or as a Ray Data pipeline on a local Ray."""
    if request.param == "in_process":
        yield contextlib.nullcontext
        return
    from trainables.data_passes import ray_passes

    request.getfixturevalue("local_ray")
    yield ray_passes


def test_streamed_scores_and_features_equal_the_in_memory_ones(fm_tree, side, passes, tmp_path):
    root, train, test = fm_tree
    files = load_dataset(f"imagefolder:{root}")
    memory = assemble("fm-memory", sorted(CLASSES), train, test, Augment())
    assert isinstance(files.train_x, FileImages) and torch.equal(files.train_y, memory.train_y)
    assert torch.equal(files.val_x.to("cpu"), memory.val_x)
    assert np.allclose(files.mean, memory.mean, atol=1e-6) and np.allclose(files.std, memory.std, atol=1e-6)

    model = model_for(memory, "convnet", width=16)
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    spec = TeacherSpec(model="convnet", model_kwargs={"width": 16}, path=str(tmp_path / "teacher.pt"))
    teacher = get_teacher(files, spec, device="cpu")
    assert teacher.test_acc == pytest.approx((predict_logits(model, memory.test_x, "cpu").argmax(1) == memory.test_y)
                                             .float().mean().item())

    ctx = SelectionContext(files, Cache(tmp_path / "cache"), "cpu", teacher_factory=lambda: teacher)
    with passes():
        streamed = {name: compute_scores(ctx, name) for name in ("entropy", "margin", "centre_distance")}
        features = ctx.features
    expected_features = predict_features(model, memory.train_x, "cpu")
    probs = predict_logits(model, memory.train_x, "cpu").softmax(1)
    assert features.shape == expected_features.shape == (len(memory.train_y), expected_features.shape[1])
    torch.testing.assert_close(features, expected_features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(streamed["entropy"], uncertainty(probs, "entropy"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(streamed["margin"], uncertainty(probs, "margin"), rtol=1e-4, atol=1e-5)
    assert streamed["entropy"].std() > 0  # not a constant that would match anything
    parts = list((tmp_path / "cache" / "passes").glob("*/*.parquet"))
    assert parts, "the pass's outputs are Parquet in the cache"

    herding = build_selector("herding").select(ctx, 5, seed=0)
    reference = SelectionContext(memory, Cache(tmp_path / "cache-memory"), "cpu", teacher_factory=lambda: teacher)
    assert herding.indices.tolist() == build_selector("herding").select(reference, 5, seed=0).indices.tolist()
    assert torch.equal(herding.images, memory.train_x[herding.indices])


def test_one_pass_over_the_tree_gives_its_scan_and_the_teachers_outputs_and_accuracy(fm_tree, side, passes,
                                                                                      tmp_path):
    root, train, test = fm_tree
    tree = tmp_path / "tree"
    shutil.copytree(root, tree)  # a listing of its own, so none of it is cached yet
    memory = assemble("fm-memory", sorted(CLASSES), train, test, Augment())
    model = model_for(memory, "convnet", width=16)
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    spec = TeacherSpec(model="convnet", model_kwargs={"width": 16}, path=str(tmp_path / "teacher.pt"))
    cache = Cache(tmp_path / "cache")
    images_mod.DECODED.clear()
    with passes():
        prepare_tree(str(tree), spec, cache)
    decoded = Counter(images_mod.DECODED)  # what this process decoded (Ray Data decodes in its workers)
    listed = {str(p) for p in tree.rglob("*.png")}
    assert (set(decoded), set(decoded.values())) in [(listed, {1}), (set(), set())]

    images_mod.DECODED.clear()
    files = load_dataset(f"imagefolder:{tree}")
    teacher = get_teacher(files, spec, cache, device="cpu")
    outputs = teacher_outputs(files, teacher, cache, "cpu")
    features, logits = outputs["features"], outputs["logits"]
    assert not images_mod.DECODED, "the loader, the teacher's accuracy and its outputs all come from the pass"
    assert np.allclose(files.mean, memory.mean, atol=1e-6) and np.allclose(files.std, memory.std, atol=1e-6)
    torch.testing.assert_close(features, predict_features(model, memory.train_x, "cpu"), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, predict_logits(model, memory.train_x, "cpu"), rtol=1e-4, atol=1e-4)
    assert teacher.test_acc == accuracy(model, memory.test_x, memory.test_y, "cpu")
    assert logits.std(0).min() > 0


def test_the_tree_pass_refuses_or_leaves_out_a_corrupt_image_as_set(tmp_path, monkeypatch):
    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", 8)
    bad = corrupt_tree(tmp_path / "tree")
    model = create_model("convnet", 3, 2, 8, (0.5,) * 3, (0.2,) * 3, width=8)
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    spec = TeacherSpec(model="convnet", model_kwargs={"width": 8}, path=str(tmp_path / "teacher.pt"))
    with pytest.raises(StudyError) as err:
        prepare_tree(str(tmp_path / "tree"), spec, Cache(tmp_path / "cache"))
    assert str(bad) in str(err.value) and "HARDTRUTHS_BAD_IMAGES=skip" in str(err.value)

    monkeypatch.setattr(study.core.data, "BAD_IMAGES", "skip")
    prepare_tree(str(tmp_path / "tree"), spec, Cache(tmp_path / "cache"))
    data = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    teacher = get_teacher(data, spec, Cache(tmp_path / "cache"), device="cpu")
    logits = teacher_outputs(data, teacher, Cache(tmp_path / "cache"), "cpu")["logits"]
    assert str(bad) not in [*data.train_x.paths, *data.test_x.paths] and len(logits) == len(data.train_y)
    torch.testing.assert_close(logits, predict_logits(model, data.train_x.to("cpu"), "cpu"), rtol=1e-4, atol=1e-4)
    assert teacher.test_acc == accuracy(model, data.test_x, data.test_y, "cpu")


def test_rded_scores_a_trees_candidates_in_one_pass_and_picks_what_it_picks_in_memory(fm_tree, side, passes,
                                                                                       tmp_path):
    root, train, test = fm_tree
    files = load_dataset(f"imagefolder:{root}")
    memory = assemble("fm-memory", sorted(CLASSES), train, test, Augment())
    spec = TeacherSpec(model="convnet", model_kwargs={"width": 16})
    teacher = Teacher(model_for(memory, "convnet", width=16).eval(), {}, 0.0, spec)
    rded, m, k, ipc = build_selector("rded", m=20, k=3), 20, 3, 2
    images_mod.DECODED.clear()
    with passes():
        streamed = rded.select(SelectionContext(files, Cache(tmp_path / "a"), "cpu", teacher_factory=lambda: teacher),
                               ipc, seed=3)
    in_here = sum(images_mod.DECODED.values())  # Ray Data decodes the candidates in its workers
    assert in_here in (m * len(CLASSES) + ipc * len(CLASSES), ipc * len(CLASSES))

    in_memory = SelectionContext(memory, Cache(tmp_path / "b"), "cpu", teacher_factory=lambda: teacher)
    reference = rded.select(in_memory, ipc, seed=3)
    assert torch.equal(streamed.images, reference.images) and torch.equal(streamed.labels, reference.labels)
    assert {key: streamed.provenance[key] for key in ("patch_source", "patch_box", "patch_loss")} == \
        {key: reference.provenance[key] for key in ("patch_source", "patch_box", "patch_loss")}

    rng, g, released = np.random.default_rng(3), generator(3), []  # class by class, as RDED was released
    for c, members in enumerate(in_memory.class_members()):
        cand = torch.as_tensor(rded.candidates(members, m, rng))
        stitched, _ = rded_patches(memory.train_x[cand], torch.full((m,), c), teacher.model, ipc, fill=memory.mean,
                                   sources=cand, k=k, g=g)
        released.append(stitched)
    assert torch.equal(streamed.images, to_uint8(torch.cat(released)))


def test_a_trial_on_an_imagefolder_set_decodes_only_its_subset(fm_tree, side, tmp_path):
    root, _, _ = fm_tree
    name = f"imagefolder:{root}"
    data = cached_dataset(name, None)  # listed and scanned (the scan is cached, so nothing is decoded below)
    images_mod.DECODED.clear()
    cfg = TrialConfig(dataset=name, selector="random", ipc=3, seeds=1,
                      protocol=Protocol(model="convnet", model_kwargs={"width": 8}, regime="hl", steps=4,
                                        batch_size=16))
    outcome = run_trial(cfg, tmp_path / "cache", device="cpu")
    chosen = set(data.train_x.paths[outcome.selections[0].indices.numpy()])
    train_decoded = set(images_mod.DECODED) & set(data.train_x.paths)
    assert len(chosen) == 3 * len(CLASSES) and train_decoded == chosen
    assert set(images_mod.DECODED) == chosen | set(data.val_x.paths) | set(data.test_x.paths)
    assert 0 <= outcome.accuracies[0] <= 1


def corrupt_tree(root):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((10, 10), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    bad = root / "b" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return bad


def test_a_corrupt_image_is_refused_or_skipped_as_set(tmp_path, monkeypatch):
    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", 8)
    bad = corrupt_tree(tmp_path / "tree")
    with pytest.raises(StudyError) as err:
        load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    message = str(err.value)
    assert str(bad) in message and "HARDTRUTHS_BAD_IMAGES=skip" in message and message.count(". ") == 0

    monkeypatch.setattr(study.core.data, "BAD_IMAGES", "skip")
    data = load_dataset(f"imagefolder:{tmp_path / 'tree'}")
    every = [*data.train_x.paths, *data.val_x.paths, *data.test_x.paths]
    assert len(every) == 12 and str(bad) not in every
    bad_after_scan = FileImages(np.array([every[0], str(bad)], dtype=object), 8, "skip")
    decoded = bad_after_scan[np.arange(2)]  # a file that turns bad after the scan: blank, counted, not a crash
    assert decoded[0].float().mean() > 0 or "0.png" in every[0]
    assert decoded[1].sum() == 0
    with pytest.raises(StudyError):
        FileImages(bad_after_scan.paths, 8, "fail")[np.arange(2)]


def test_the_study_check_counts_an_imagefolder_tree_without_decoding_it(fm_tree, side, tmp_path):
    from study.core.data import smallest_class

    root, _, _ = fm_tree
    images_mod.DECODED.clear()
    assert smallest_class(f"imagefolder:{root}") == int(load_dataset(f"imagefolder:{root}").class_counts().min())
    flat = tmp_path / "flat"
    corrupt_tree(flat)
    (flat / "b" / "9.png").unlink()
    images_mod.DECODED.clear()
    assert smallest_class(f"imagefolder:{flat}") == 4 and not images_mod.DECODED
    assert smallest_class(f"imagefolder:{flat}") == int(load_dataset(f"imagefolder:{flat}").class_counts().min())


def test_the_imagenet_preset_runs_on_a_tree_with_the_users_teacher_and_refuses_what_is_missing(tmp_path,
                                                                                           monkeypatch):
    from study.core.data import smallest_class
    from study.runs.spec import resolve_spec, validate_spec

    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", 8)
    tree = tmp_path / "imagenet"
    corrupt_tree(tree / "train")
    corrupt_tree(tree / "val")
    for split in ("train", "val"):
        (tree / split / "b" / "9.png").unlink()
    name = f"imagefolder:{tree}"
    data = load_dataset(name)
    weights = tmp_path / "resnet18.pt"
    torch.save(model_for(data, "resnet18").state_dict(), weights)

    def spec(*overrides, dataset=name):
        s = resolve_spec("quick", preset="imagenet", dataset=dataset, selectors=["herding"], ipc=[2],
                         regimes=["hl"], overrides=list(overrides))
        validate_spec(s, smallest_class(s.protocol["dataset"]))
        return s

    ready = spec(f"teacher.path={weights}")
    cfg = ready.cells()[0]
    teacher = get_teacher(data, cfg.teacher, device="cpu")
    ctx = SelectionContext(data, Cache(tmp_path / "cache"), "cpu", teacher_factory=lambda: teacher)
    assert len(build_selector("herding").select(ctx, 2, seed=0)) == 4

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for overrides, dataset, says in [((), name, "/data/imagenet/teacher.pt does not exist"),
                                     ((f"teacher.path={tmp_path / 'junk.pt'}",), name, "is not a state dict"),
                                     ((f"teacher.path={weights}",), f"imagefolder:{tmp_path / 'none'}", "is not one")]:
        with pytest.raises(StudyError) as err:
            spec(*overrides, dataset=dataset)
        assert says in str(err.value) and str(err.value).count(". ") == 0
