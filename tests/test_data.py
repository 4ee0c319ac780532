"""Datasets: every offline dataset loads with the right shapes, classes and splits; missing data is one sentence."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import study.core.data
from study.core.data import SPLIT_SEED, carve_val, list_datasets, load_dataset
from study.core.errors import StudyError

# What each registered dataset must look like when it is available offline. A dataset added to the
# registry without a row here fails test_every_registered_dataset_is_covered.
EXPECTED = {
    "digits": dict(classes=10, shape=(1, 8, 8), n_train=1299, n_val=139, n_test=359),
    "fashion-mnist": dict(classes=10, shape=(1, 28, 28), n_train=59000, n_val=1000, n_test=10000),
}
NEEDS_ROOT = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
FOLDER_KINDS = {"imagefolder"}
RELEASED_LAYOUTS = {"tinyimagenet"}  # loaded from a generated tree of its layout in tests/test_paper_protocols.py


def one_sentence(msg: str) -> bool:
    return "\n" not in msg and msg.endswith(".") and "Traceback" not in msg and len(msg) < 600


def test_every_registered_dataset_is_covered():
    assert set(list_datasets()) == set(EXPECTED) | set(NEEDS_ROOT) | FOLDER_KINDS | RELEASED_LAYOUTS


@pytest.fixture(scope="module")
def fashion():
    if not study.core.data.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    return load_dataset("fashion-mnist")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_offline_dataset_shapes_and_splits(name, request):
    data = request.getfixturevalue("fashion") if name == "fashion-mnist" else load_dataset(name)
    exp = EXPECTED[name]
    assert data.num_classes == exp["classes"] == len(data.classes)
    assert data.image_shape == exp["shape"]
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (exp["n_train"], exp["n_val"], exp["n_test"])
    for x, y in [(data.train_x, data.train_y), (data.val_x, data.val_y), (data.test_x, data.test_y)]:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape[0] == y.shape[0] and tuple(x.shape[1:]) == exp["shape"]
        assert set(y.unique().tolist()) == set(range(exp["classes"]))
    # Every class is present in train, and the validation split is class-balanced: a tenth, at most 100.
    full = data.class_counts() + torch.bincount(data.val_y, minlength=data.num_classes)
    val_counts = torch.bincount(data.val_y, minlength=data.num_classes)
    assert torch.equal(val_counts, (full // 10).clamp(1, 100))
    assert len(data.mean) == len(data.std) == exp["shape"][0]
    assert all(0 < m < 1 for m in data.mean) and all(0 < s < 1 for s in data.std)
    assert data.train_x.max() > 100  # uint8 pixels, not [0, 1] floats


def test_fashion_mnist_val_is_100_per_class(fashion):
    assert torch.equal(torch.bincount(fashion.val_y), torch.full((10,), 100))
    assert torch.equal(torch.bincount(fashion.test_y), torch.full((10,), 1000))
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    assert fashion.augment.crop_padding == 2 and fashion.augment.flip


def test_split_is_deterministic_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    # carve_val on labelled positions: validation and training indices never overlap and cover everything.
    y = torch.arange(200) % 4
    pos = torch.arange(200).view(-1, 1, 1, 1)
    (tx, ty), (vx, vy) = carve_val(pos, y, 4, seed=SPLIT_SEED)
    train_ids, val_ids = set(tx.flatten().tolist()), set(vx.flatten().tolist())
    assert not train_ids & val_ids and len(train_ids | val_ids) == 200
    assert torch.equal(torch.bincount(vy), torch.full((4,), 5))
    (_, _), (vx2, _) = carve_val(pos, y, 4, seed=SPLIT_SEED + 1)
    assert not torch.equal(vx, vx2)


def test_missing_fashion_mnist_is_one_sentence(tmp_path, monkeypatch):
    empty_root, no_debian = tmp_path / "root", tmp_path / "no-debian"
    empty_root.mkdir()
    monkeypatch.setattr(study.core.data, "DEBIAN_FASHION_MNIST", no_debian)
    with pytest.raises(StudyError) as err:
        load_dataset("fashion-mnist", data_root=empty_root)
    msg = str(err.value)
    assert one_sentence(msg), msg
    assert str(empty_root) in msg and str(no_debian) in msg  # says where it looked
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg  # and how to get it
    with pytest.raises(StudyError):  # no data root at all, Debian folder absent
        load_dataset("fashion-mnist")


def test_fashion_mnist_from_a_data_root(tmp_path, monkeypatch, fashion):
    """IDX files under --data-root are found (here: the Debian files copied into a torchvision-style folder)."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in study.core.data.DEBIAN_FASHION_MNIST.iterdir():
        (raw / f.name).symlink_to(f)
    monkeypatch.setattr(study.core.data, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    data = load_dataset("fashion-mnist", data_root=tmp_path)
    assert torch.equal(data.test_y, fashion.test_y) and torch.equal(data.val_x, fashion.val_x)


@pytest.mark.parametrize("name", sorted(NEEDS_ROOT))
def test_torchvision_dataset_with_empty_root_is_one_sentence(name, tmp_path):
    with pytest.raises(StudyError) as err:
        load_dataset(name, data_root=tmp_path)
    msg = str(err.value)
    assert one_sentence(msg), msg
    assert NEEDS_ROOT[name] in msg and str(tmp_path) in msg and "download=True" in msg
    with pytest.raises(StudyError) as err:
        load_dataset(name)
    assert one_sentence(str(err.value)) and "--data-root" in str(err.value)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(StudyError) as err:
        load_dataset("imagenet-9000")
    assert "digits" in str(err.value) and "fashion-mnist" in str(err.value)


def write_tree(root, classes, per_class, size=12, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            mode = "L" if i % 2 else "RGB"  # grayscale files are read as 3 channels too
            img = Image.fromarray(pixels).convert(mode)
            img.save(folder / f"{name}_{i}.png")


def test_imagefolder_loads_writes_manifest_and_refuses_changed_classes(tmp_path, monkeypatch):
    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", 16)
    tree = tmp_path / "tree"
    write_tree(tree, ["cat", "dog"], per_class=5)
    data = load_dataset(f"imagefolder:{tree}")
    assert data.classes == ["cat", "dog"]
    # 5 per class: 1 to test (a fifth), 1 to val (at least one), 3 to train.
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (6, 2, 2)
    assert data.image_shape == (3, 16, 16) and data.train_x.dtype == torch.uint8
    assert torch.equal(torch.bincount(data.train_y), torch.tensor([3, 3]))
    assert data.augment.random_resized_crop
    manifest = tree / ".hardtruths-classes.json"
    assert json.loads(manifest.read_text()) == {"cat": 0, "dog": 1}
    again = load_dataset(f"imagefolder:{tree}")  # unchanged tree: reloads fine
    assert torch.equal(again.train_x.to("cpu"), data.train_x.to("cpu"))

    write_tree(tree, ["bird"], per_class=5, seed=1)  # a new class shifts the mapping
    with pytest.raises(StudyError) as err:
        load_dataset(f"imagefolder:{tree}")
    assert one_sentence(str(err.value)) and str(manifest) in str(err.value)


def test_imagefolder_with_train_and_val_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", 8)
    tree = tmp_path / "tiny"
    write_tree(tree / "train", ["a", "b"], per_class=4)
    write_tree(tree / "val", ["a", "b"], per_class=2, seed=3)
    data = load_dataset(f"imagefolder:{tree}")
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (6, 2, 4)
    assert data.image_shape == (3, 8, 8)


def test_imagefolder_bad_path_is_one_sentence(tmp_path):
    with pytest.raises(StudyError) as err:
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    assert one_sentence(str(err.value))
    for sub in ("a", "b"):  # class folders without images
        (tmp_path / "empty" / sub).mkdir(parents=True)
    for tree in (tmp_path / "empty", tmp_path / "empty" / "a"):  # ... and a folder without class folders
        with pytest.raises(StudyError) as err:
            load_dataset(f"imagefolder:{tree}")
        assert one_sentence(str(err.value)) and str(tree) in str(err.value)
