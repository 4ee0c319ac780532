"""An ImageFolder folder's listing, made once by a study's driver and read by every process of the study.

Loading a tree lists it (torchvision's ``make_dataset``) and stats every file
for the key of its cached scan. Every selection task and every trial loads the
tree, so each paid that: seconds for 60 k images, tens of seconds per process
at ImageNet's 1.28 M, more on network storage (benchmarks/README.md,
``tree_listing.py``). Inside
:func:`published_listings` the driver stores its listing in the cache and names
it in ``HARDTRUTHS_TREE_LISTINGS``, which travels with the Ray job
(study.core.environment); a worker then reads the stored listing instead. It
also means all processes of a study see the same files, even if the tree
changes while the study runs.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.core.cache import Cache
from study.core.errors import StudyError
from study.core.seeding import content_hash

ENV = "HARDTRUTHS_TREE_LISTINGS"
KIND = "listings"
CODE = [__name__]  # the code that lists a folder (study.core.cache)

# folder -> the cache key of its stored listing: the driver's, inherited through the environment by its workers
PUBLISHED: dict[str, dict] = json.loads(os.environ.get(ENV) or "{}")


@dataclass(frozen=True)
class Listing:
    paths: np.ndarray  # the image files, in torchvision ImageFolder's order
    labels: torch.Tensor
    mapping: dict[str, int]  # class folder -> label
    files: str  # a hash of every file's path, size and modification time: what the folder's scan depends on


def index_image_folder(path: Path) -> tuple[np.ndarray, torch.Tensor, dict[str, int]]:
    """The folder's image paths and labels, in torchvision ImageFolder's order, without opening an image."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        _, class_to_idx = find_classes(str(path))
        samples = make_dataset(str(path), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError:
        raise StudyError(f"{path} holds no class sub-folders with images; imagefolder expects PATH/CLASS/IMAGE "
                         "files (.png, .jpg, ...).") from None
    paths = np.array([p for p, _ in samples], dtype=object)
    return paths, torch.as_tensor([c for _, c in samples], dtype=torch.int64), class_to_idx


def list_folder(path: Path) -> Listing:
    paths, labels, mapping = index_image_folder(path)
    stats = [os.stat(p) for p in paths]
    files = content_hash([[str(p), s.st_size, s.st_mtime_ns] for p, s in zip(paths, stats)], length=24)
    return Listing(paths, labels, mapping, files)


def folder_listing(path: Path) -> Listing:
    """The driver's stored listing of ``path`` when this process belongs to a study that published one, else a
    fresh one."""
    key = PUBLISHED.get(str(path))
    stored = Cache().load(KIND, key, code=CODE) if key else None
    if stored is None:
        return list_folder(path)
    return Listing(np.array(stored["paths"], dtype=object), stored["labels"], stored["mapping"], stored["files"])


@contextlib.contextmanager
def published_listings(folders: list[Path]):
    """List ``folders`` once here, store the listings, and name them in this process and, through
    :func:`environment`, in every worker of a Ray job started inside the block."""
    before = dict(PUBLISHED)
    try:
        for folder in folders:
            listing = list_folder(folder)
            key = {"kind": "listing", "folder": str(folder), "files": listing.files}
            Cache().get_or_compute(KIND, key, lambda: {"paths": listing.paths.tolist(), "labels": listing.labels,
                                                       "mapping": listing.mapping, "files": listing.files}, code=CODE)
            PUBLISHED[str(folder)] = key
        yield
    finally:
        PUBLISHED.clear()
        PUBLISHED.update(before)


def environment() -> dict[str, str]:
    return {ENV: json.dumps(PUBLISHED)} if PUBLISHED else {}
