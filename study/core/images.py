"""File-backed images: an index of paths, decoded on demand, behind the interface training already reads.

An ImageNet-sized split does not fit in memory (1.28 M images at 224 px are about 190 GB), yet a trial trains
on at most IPC x classes of them and a full-set pass reads each image once. :class:`FileImages` therefore holds
only paths; indexing it (``images[idx]``) decodes exactly those images into a uint8 ``(n, C, H, W)`` tensor, and
``split(n)`` streams the whole index in decoded chunks, as ``Tensor.split`` does, so the evaluation and
inference helpers take either. ``subset(idx)`` is a view that decodes nothing.

Unreadable files follow ``bad_images``: ``fail`` refuses them (naming every one), ``skip`` drops them from the
index when the tree is scanned (study.core.data) and, for a file that turns bad after the scan, decodes it as a
blank image and counts it, so a pass that has run for hours never dies on one file.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from study.core.errors import StudyError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("fail", "skip")

# Paths decoded in this process (how many times each): what a test reads to check that a trial decoded only
# its subset, and what the benchmark reads to count the decodes per pass.
DECODED: Counter = Counter()


class BadImage(Exception):
    """A file that exists in the index but cannot be decoded."""


def decode_path(path: str, size: int) -> torch.Tensor:
    """One image as uint8 (3, size, size): RGB, resized on its shorter side (antialiased), centre-cropped, as
    torchvision's ImageFolder with PILToTensor, Resize and CenterCrop gives it."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    DECODED[path] += 1
    try:
        with Image.open(path) as im:
            image = TF.pil_to_tensor(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise BadImage(f"{path} ({err})".splitlines()[0]) from None
    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def decode_paths(paths, size: int, bad_images: str = "fail") -> tuple[torch.Tensor, np.ndarray]:
    """Decode ``paths`` into one uint8 tensor and an ok-mask; a bad file is a blank image under ``skip``."""
    out = torch.zeros(len(paths), 3, size, size, dtype=torch.uint8)
    ok = np.ones(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_path(str(path), size)
        except BadImage as err:
            if bad_images == "fail":
                raise StudyError(f"The image {err} could not be decoded; remove or replace it, or set "
                                 "HARDTRUTHS_BAD_IMAGES=skip to leave unreadable files out.") from None
            log.warning("Skipped unreadable image %s", err)
            ok[i] = False
    return out, ok


@dataclass(frozen=True)
class FileImages:
    """Images of one split as paths; ``size`` is the side every image is decoded to."""

    paths: np.ndarray
    size: int
    bad_images: str = "fail"
    channels: int = field(default=3)

    def __post_init__(self):
        if self.bad_images not in BAD_IMAGE_POLICIES:
            raise StudyError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, not {self.bad_images!r}.")

    def __len__(self) -> int:
        return len(self.paths)

    dtype = torch.uint8

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.paths), self.channels, self.size, self.size

    def subset(self, idx) -> "FileImages":
        return FileImages(self.paths[np.asarray(idx, dtype=np.int64)], self.size, self.bad_images, self.channels)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return decode_paths(np.atleast_1d(self.paths[idx]), self.size, self.bad_images)[0]

    def split(self, chunk: int):
        """Decoded chunks of ``chunk`` images in index order (as ``Tensor.split``)."""
        for start in range(0, len(self.paths), chunk):
            yield self[np.arange(start, min(start + chunk, len(self.paths)))]

    def digest(self) -> str:
        """16 hex digits over the paths and the decoded size: which images, not their bytes (hashing an
        ImageNet tree's bytes would read it all; the scan's cache key holds each file's size and time)."""
        return hashlib.sha256("\0".join(map(str, self.paths)).encode() + f"|{self.size}".encode()).hexdigest()[:16]

    def to(self, *args, **kwargs) -> torch.Tensor:
        """The whole split decoded (what training on the full set needs: a teacher or a full-data trial)."""
        return self[np.arange(len(self.paths))].to(*args, **kwargs)


def take(images, idx):
    """``images`` restricted to ``idx`` without decoding: a view for files, an index for a tensor."""
    return images.subset(idx) if isinstance(images, FileImages) else images[idx]


def materialise(images) -> torch.Tensor:
    return images.to("cpu") if isinstance(images, FileImages) else images
