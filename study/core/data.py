"""Datasets as uint8 images with a fixed, seeded train / val / test split.

Every loader returns a :class:`Dataset` whose images are ``uint8`` tensors of
shape ``(N, C, H, W)``, or for an ImageFolder tree file-backed images with the
same indexing (study.core.images: decoded on demand, never all at once), and
whose labels are ``int64``. The validation split is
carved from the training data, class-balanced, with a seed that belongs to the
dataset (not to a trial), so every trial of every study sees the same split and
learning rates are never chosen on the test set.

Names: ``digits`` (ships with scikit-learn: the embedded default),
``fashion-mnist`` (Debian's ``dataset-fashion-mnist`` or a data root),
``mnist`` / ``cifar10`` / ``cifar100`` (torchvision datasets under a data root),
and ``imagefolder:PATH`` (an ImageFolder tree, e.g. Tiny-ImageNet).
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from study.core.cache import Cache, atomic_write_text
from study.core.errors import StudyError
from study.core.images import FileImages, take
from study.core.listing import Listing, folder_listing, index_image_folder
from study.core.passes import read_pass, run_pass
from study.core.registry import Registry
from study.core.seeding import numpy_rng

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 20260418


@dataclass(frozen=True)
class Augment:
    """The train-time views of a dataset, or of a set that needs its own (applied on device, see
    study.core.augment, whose ``stitched_views`` and ``patch_views`` are the two kinds a set may need).

    Order of a view: ShufflePatches(``shuffle_patches``), then a random-resized crop (``crop_scale``,
    ``crop_ratio`` in pixels) or a padded random crop, cut at 1/``patch_pad`` of the side and padded back to
    full size in ``fill`` (colours in [0, 1]), then a horizontal flip."""

    crop_padding: int = 0
    flip: bool = False
    random_resized_crop: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    shuffle_patches: int = 1
    patch_pad: int = 1
    fill: tuple[float, ...] = (0.0,)


@dataclass
class Dataset:
    name: str
    classes: list[str]
    train_x: torch.Tensor | FileImages
    train_y: torch.Tensor
    val_x: torch.Tensor | FileImages
    val_y: torch.Tensor
    test_x: torch.Tensor | FileImages
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.train_y, minlength=self.num_classes)

    def summary(self) -> dict:
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "n_train": len(self.train_y),
            "n_val": len(self.val_y),
            "n_test": len(self.test_y),
        }


LoaderFn = Callable[..., Dataset]
DATASETS: Registry[LoaderFn] = Registry("dataset")


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load a registered dataset; ``kind:ARG`` names pass ARG to the loader."""
    loader, named = DATASETS.resolve(name)
    root = Path(data_root).expanduser() if data_root else None
    return loader(root=root, download=download, **named)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float().div_(255)
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def carve_val(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int = SPLIT_SEED):
    """Class-balanced validation split: a tenth of each class, at most 100 per class."""
    rng = numpy_rng(seed)
    yn = y.numpy()
    val_idx = []
    for c in range(num_classes):
        members = np.flatnonzero(yn == c)
        n_val = max(1, min(100, len(members) // 10))
        val_idx.append(rng.choice(members, size=n_val, replace=False))
    val = np.sort(np.concatenate(val_idx))
    keep = np.setdiff1d(np.arange(len(yn)), val)
    return (take(x, keep), y[keep]), (take(x, val), y[val])


def stratified_test_split(x, y, num_classes: int, fraction: float, seed: int = SPLIT_SEED):
    """Split off a class-balanced test set for datasets that ship without one."""
    rng = numpy_rng(seed + 1)
    yn = y.numpy()
    test = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(yn == c), size=int(round(fraction * (yn == c).sum())), replace=False)
        for c in range(num_classes)
    ]))
    keep = np.setdiff1d(np.arange(len(yn)), test)
    return (take(x, keep), y[keep]), (take(x, test), y[test])


def assemble(name, classes, train, test, augment: Augment, stats=channel_stats) -> Dataset:
    """The dataset with its validation split carved from ``train``; ``stats`` gives the normalisation of the
    remaining training images (a file-backed set reads it from its scan instead of decoding them again)."""
    (tx, ty), (vx, vy) = carve_val(train[0], train[1], len(classes))
    mean, std = stats(tx)
    return Dataset(name, list(classes), tx, ty, vx, vy, test[0], test[1], mean, std, augment)


def as_nchw_uint8(images: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    elif t.ndim == 4 and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
        t = t.permute(0, 3, 1, 2).contiguous()
    return t.to(torch.uint8)


@DATASETS.register("digits")
def load_digits(arg: str = "", root: Path | None = None, download: bool = False) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy((bunch.images * 16).clip(0, 255).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = stratified_test_split(x, y, 10, fraction=0.2)
    return assemble("digits", [str(i) for i in range(10)], train, test, Augment(crop_padding=1))


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(bytearray(data), dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx_files(folders: list[Path]) -> dict[str, Path] | None:
    stems = {
        "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
    }
    for folder in folders:
        found = {}
        for key, stem in stems.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.exists():
                    found[key] = candidate
                    break
        if len(found) == 4:
            return found
    return None


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(arg: str = "", root: Path | None = None, download: bool = False) -> Dataset:
    folders = []
    if root is not None:
        folders += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    folders.append(DEBIAN_FASHION_MNIST)
    files = find_idx_files(folders)
    if files is None and download and root is not None:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        files = find_idx_files(folders)
    if files is None:
        looked = ", ".join(str(f) for f in folders)
        raise StudyError(
            f"Fashion-MNIST was not found in {looked}; install it with "
            "'apt-get install dataset-fashion-mnist', pass --data-root to a folder holding its IDX files, "
            "or fetch it once with study.core.data.load_dataset('fashion-mnist', ROOT, download=True) where there is internet."
        )
    arrays = {k: read_idx(p) for k, p in files.items()}
    train = (as_nchw_uint8(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)))
    test = (as_nchw_uint8(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)))
    return assemble("fashion-mnist", FASHION_CLASSES, train, test, Augment(crop_padding=2, flip=True))


def torchvision_loader(name: str, cls_name: str, augment: Augment) -> LoaderFn:
    def load(arg: str = "", root: Path | None = None, download: bool = False) -> Dataset:
        import torchvision.datasets as tvd

        if root is None:
            raise StudyError(f"Dataset {name!r} needs --data-root pointing at a torchvision {cls_name} folder.")
        cls = getattr(tvd, cls_name)
        try:
            parts = [cls(str(root), train=flag, download=download) for flag in (True, False)]
        except RuntimeError:
            raise StudyError(
                f"{cls_name} was not found under {root}; pass the folder that holds it, or fetch it once with "
                f"study.core.data.load_dataset({name!r}, ROOT, download=True) where there is internet."
            ) from None
        tensors = [(as_nchw_uint8(np.asarray(p.data)), torch.as_tensor(np.asarray(p.targets), dtype=torch.int64))
                   for p in parts]
        return assemble(name, list(parts[0].classes), tensors[0], tensors[1], augment)

    return load


def tiny_imagenet_folder(root: Path | None) -> Path:
    """The ``tiny-imagenet-200`` folder under ``root`` (or ``root`` itself): the one holding ``wnids.txt``."""
    for folder in ([root / "tiny-imagenet-200", root] if root is not None else []):
        if (folder / "wnids.txt").is_file():
            return folder
    raise StudyError(f"TinyImageNet was not found under {root}; pass --data-root to the folder holding "
                     "tiny-imagenet-200/ as released (train/<wnid>/images/*.JPEG, val/images, val/val_annotations.txt, "
                     "wnids.txt), unzipped from http://cs231n.stanford.edu/tiny-imagenet-200.zip.")


def decode_rgb(paths: list[Path]) -> torch.Tensor:
    from PIL import Image

    return as_nchw_uint8(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths]))


@DATASETS.register("tinyimagenet")
def load_tiny_imagenet(arg: str = "", root: Path | None = None, download: bool = False) -> Dataset:
    """TinyImageNet in its released layout: 200 classes (``wnids.txt`` order) of 500 training images at 64 px;
    the released validation split (50 a class, labelled in ``val_annotations.txt``) is the test set, as in the
    DD literature (the test split's labels were never released), and validation is carved from train."""
    base = tiny_imagenet_folder(root)
    wnids = (base / "wnids.txt").read_text().split()
    label = {w: i for i, w in enumerate(wnids)}
    train = [(p, label[w]) for w in wnids for p in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    rows = [line.split("\t") for line in (base / "val" / "val_annotations.txt").read_text().splitlines() if line]
    test = [(base / "val" / "images" / r[0], label[r[1]]) for r in rows]
    parts = [(decode_rgb([p for p, _ in split]), torch.tensor([y for _, y in split], dtype=torch.int64))
             for split in (train, test)]
    return assemble("tinyimagenet", wnids, parts[0], parts[1], Augment(crop_padding=8, flip=True))


DATASETS.register("mnist")(torchvision_loader("mnist", "MNIST", Augment(crop_padding=2)))
DATASETS.register("cifar10")(torchvision_loader("cifar10", "CIFAR10", Augment(crop_padding=4, flip=True)))
DATASETS.register("cifar100")(torchvision_loader("cifar100", "CIFAR100", Augment(crop_padding=4, flip=True)))

DEFAULT_IMAGEFOLDER_SIZE = 64
IMAGEFOLDER_SIZE = int(os.environ.get("HARDTRUTHS_IMAGEFOLDER_SIZE", str(DEFAULT_IMAGEFOLDER_SIZE)))
BAD_IMAGES = os.environ.get("HARDTRUTHS_BAD_IMAGES", "fail")


def check_manifest(root: Path, class_to_idx: dict[str, int]) -> None:
    """Write the class-to-index mapping once and refuse a tree whose mapping has changed since."""
    manifest = root / ".hardtruths-classes.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        if recorded != class_to_idx:
            raise StudyError(
                f"The classes under {root} differ from those recorded in {manifest}; "
                "delete the manifest if the change is intended."
            )
    else:
        try:
            atomic_write_text(manifest, json.dumps(class_to_idx, indent=1, sort_keys=True))
        except OSError:
            pass


@dataclass(frozen=True)
class ScanWork:
    """The scan's per-image work: each channel's sum and sum of squares in [0, 1], and whether it decoded."""

    def bind(self, device: str):
        def scan(images: torch.Tensor, ok: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
            x = images.double().div_(255).flatten(2)
            return {"ok": ok, "sum": x.sum(2).numpy(), "sumsq": x.pow(2).sum(2).numpy()}

        return scan


SCAN_COLUMNS = ["ok", "sum", "sumsq"]
SCAN_CODE = [__name__, "study.core.tree_pass"]  # what makes a scan: this loader's pass, or the study's one pass


def scan_key(listing: Listing, size: int) -> dict:
    """What a scan depends on: the listed files (paths, sizes, modification times) and the decoded size."""
    return {"kind": "scan", "listing": listing.files, "size": size}


def scan_images(listing: Listing, size: int) -> dict[str, np.ndarray]:
    """Decode every image once, as a full-set pass cached per listing, for the channel statistics and the
    unreadable files; the images themselves are not kept. A study's preparation makes this entry in the
    teacher's pass instead (study.core.tree_pass), so the tree is decoded once."""
    images = FileImages(listing.paths, size, bad_images="skip")
    folder = Cache().folder("scans", scan_key(listing, size), lambda out: run_pass(images, ScanWork(), out),
                            code=SCAN_CODE)
    return read_pass(folder)


def listed_rows(listing: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """Where each of ``paths`` sits in ``listing`` (both arrays of path strings), by a dict: ``np.isin`` on object
    arrays is far slower (benchmarks/README.md, "Reading a tree's rows")."""
    position = {path: i for i, path in enumerate(listing.tolist())}
    return np.fromiter((position[path] for path in paths.tolist()), dtype=np.int64, count=len(paths))


def file_stats(scan: dict[str, np.ndarray], paths: np.ndarray, pixels: int):
    """:func:`channel_stats` of the images at ``paths`` from their scanned per-image sums (float64, exact to
    the float32 rounding of the in-memory version)."""
    rows = listed_rows(scan["paths"], paths)
    total, squares, count = scan["sum"][rows].sum(0), scan["sumsq"][rows].sum(0), len(rows) * pixels
    mean = total / count
    std = np.sqrt(np.maximum(squares - count * mean ** 2, 0) / max(count - 1, 1))
    return tuple(mean.tolist()), tuple(np.maximum(std, 1e-3).tolist())


def file_split(path: Path, size: int, bad_images: str):
    """One split of the tree: its images (paths, scanned) and labels, bad files refused or left out."""
    listing = folder_listing(path)
    paths, labels, mapping = listing.paths, listing.labels, listing.mapping
    scan = {**scan_images(listing, size), "paths": paths}
    bad = paths[~scan["ok"]]
    if len(bad) and bad_images == "fail":
        shown = ", ".join(str(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise StudyError(f"{len(bad)} image(s) under {path} could not be decoded ({shown}); remove or replace them, "
                         "or set HARDTRUTHS_BAD_IMAGES=skip to leave unreadable files out.")
    if len(bad):
        log.warning("Left out %d unreadable image(s) under %s: %s", len(bad), path, ", ".join(map(str, bad)))
    keep = np.flatnonzero(scan["ok"])
    return (FileImages(paths[keep], size, bad_images), labels[keep]), mapping, scan


def smallest_class(name: str, data_root: str | None = None) -> int:
    """The smallest class's training images, for checking a study's IPC before any compute: an ImageFolder tree
    is listed, not scanned (its scan decodes every image, and runs later as a pass of the preparation), so a
    file left out as unreadable is still counted here; the selector checks the exact count."""
    path = image_folder_path(name)
    if path is None:
        return int(load_dataset(name, data_root).class_counts().min())
    dirs = split_dirs(path)
    _, labels, mapping = index_image_folder(dirs[0])
    n = int(torch.bincount(labels, minlength=len(mapping)).min())
    if len(dirs) == 1:  # the loader splits a test fifth off, as stratified_test_split does
        n -= int(round(0.2 * n))
    return n - max(1, min(100, n // 10))  # and the validation tenth, as carve_val does


def class_count(name: str, data_root: str | None = None) -> int:
    """The dataset's number of classes (an epoch budget's subset holds IPC x classes images): an ImageFolder
    tree's class folders are listed, any other dataset is loaded."""
    path = image_folder_path(name)
    if path is None:
        return load_dataset(name, data_root).num_classes
    return len(index_image_folder(split_dirs(path)[0])[2])


def tree_path(arg: str) -> Path:
    """The folder of ``imagefolder:ARG``, refused in one sentence when it is not one."""
    path = Path(arg).expanduser()
    if not arg or not path.is_dir():
        raise StudyError(f"imagefolder:PATH needs an existing folder of class sub-folders, and {arg!r} is not one.")
    return path


def image_folder_path(name: str) -> Path | None:
    """The tree of an ``imagefolder:PATH`` dataset name; None for any other dataset."""
    kind, named = DATASETS.resolve(name)
    return tree_path(named.get("arg", "")) if kind is load_image_folder else None


def listed_folders(name: str) -> list[Path]:
    """The folders a dataset's loader lists: an ImageFolder tree's splits, none for any other dataset."""
    path = image_folder_path(name)
    return split_dirs(path) if path is not None else []


def split_dirs(path: Path) -> list[Path]:
    """The tree's listed folders: PATH/train and PATH/val (or PATH/test) when it has both, else PATH itself
    (the loader then splits a test fifth off)."""
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    return [path / "train", test_dir] if (path / "train").is_dir() and test_dir is not None else [path]


@DATASETS.register("imagefolder")
def load_image_folder(arg: str = "", root: Path | None = None, download: bool = False) -> Dataset:
    """An ImageFolder tree, file-backed: the loader lists and scans it once; images are decoded when used."""
    path = tree_path(arg)
    if BAD_IMAGES not in ("fail", "skip"):
        raise StudyError(f"HARDTRUTHS_BAD_IMAGES must be 'fail' or 'skip', not {BAD_IMAGES!r}.")
    size = IMAGEFOLDER_SIZE
    dirs = split_dirs(path)
    if len(dirs) == 2:
        train, mapping, scan = file_split(dirs[0], size, BAD_IMAGES)
        test, test_mapping, _ = file_split(dirs[1], size, BAD_IMAGES)
        if test_mapping != mapping:
            raise StudyError(f"The class folders of {dirs[0]} and {dirs[1]} differ.")
    else:
        (x, y), mapping, scan = file_split(path, size, BAD_IMAGES)
        train, test = stratified_test_split(x, y, len(mapping), fraction=0.2)
    check_manifest(path, mapping)
    classes = sorted(mapping, key=mapping.get)
    return assemble(f"imagefolder:{path}", classes, train, test, Augment(random_resized_crop=True, flip=True),
                    stats=lambda tx: file_stats(scan, tx.paths, size * size))
