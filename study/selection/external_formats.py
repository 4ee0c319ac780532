"""The sets ``external:PATH`` reads: ``.pt`` and ``.npz`` files and ImageFolder trees, their cards and hashes.

The format is documented in docs/external.md; ``python -m study.export``
writes it. :func:`load_external` reads a set and checks it against the
dataset, and a problem is one sentence (a :class:`StudyError`): unreadable
file, class count, labels out of range, image shape (resized only with
``resize=True``), value range and normalisation (``[0, 1]`` floats, ``[0,
255]`` numbers or images normalised with the dataset's mean/std: detected, or
refused when ambiguous), unequal per-class counts, and an IPC that differs
from the one the study asks for (the IPC is read from the file). Images come
back as uint8 like every other selection, so a set saved as floats is rounded
once, on import.

The content hash (:func:`compute_content_hash`) is SHA-256 of a file's bytes,
or of a folder's image files; the card (:func:`card_path`) is the JSON file
study.export writes beside a set.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from study.core.errors import StudyError

IMAGE_KEYS = ("images", "x", "image_syn")
LABEL_KEYS = ("labels", "y", "targets", "label_syn")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FILE_FORMATS = {".pt": "pt", ".pth": "pt", ".npz": "npz"}  # by suffix; anything else is an ImageFolder tree
CARD_NAME = "card.json"
VALUE_RANGES = ("auto", "unit", "255", "dataset")
LAYOUTS = ("auto", "nchw", "nhwc")

_hash_memo: dict[tuple, str] = {}


# ---------------------------------------------------------------- hashing


def image_files(folder: Path) -> list[Path]:
    """The image files of an ImageFolder tree, class folder by class folder, each sorted by name."""
    return [f for d in class_folders(folder) for f in sorted(d.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]


def class_folders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute_content_hash(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes (``sha256sum FILE``); for a folder, of each image file's relative path
    (POSIX), a NUL byte and its SHA-256 hex, then a newline, in the order :func:`image_files` lists them."""
    path = Path(path)
    try:
        files = [path] if path.is_file() else image_files(path)
        stamp = (str(path.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    except OSError as err:
        raise StudyError(f"{path} could not be read ({err.strerror or type(err).__name__}).") from None
    if stamp in _hash_memo:
        return _hash_memo[stamp]
    try:
        if path.is_file():
            digest = file_sha256(path)
        else:
            h = hashlib.sha256()
            for f in files:
                h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
            digest = h.hexdigest()
    except OSError as err:
        raise StudyError(f"{path} could not be read ({err.strerror or type(err).__name__}).") from None
    _hash_memo[stamp] = digest
    return digest


def hash_scheme(path: Path) -> str:
    return "folder-sha256" if path.is_dir() else "file-sha256"


def card_path(path: Path) -> Path:
    """Where study.export puts the JSON card: FILE.json beside a file, card.json inside a folder."""
    return path / CARD_NAME if path.is_dir() else path.with_suffix(".json")


def read_card(path: Path) -> dict | None:
    card = card_path(path)
    try:
        return json.loads(card.read_text()) if card.is_file() else None
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- reading


@dataclass
class RawSet:
    """What a file holds, before any check: images as stored, labels, optional class names and mean/std."""

    images: torch.Tensor
    labels: torch.Tensor
    format: str
    classes: list[str] | None = None
    mean: tuple | None = None
    std: tuple | None = None
    notes: dict = field(default_factory=dict)


def pick(d: dict, keys: tuple, what: str, path: Path):
    for k in keys:
        if k in d:
            return d[k]
    raise StudyError(f"{path} has no {what}: it must hold one of the keys {', '.join(keys)} "
                     f"(it holds {', '.join(map(str, d)) or 'nothing'}).")


def as_tensor(value, what: str, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(value)))
    except (TypeError, ValueError):
        raise StudyError(f"The {what} in {path} are not a numeric array.") from None


def optional_stats(d: dict, path: Path) -> tuple[tuple | None, tuple | None]:
    if "mean" not in d and "std" not in d:
        return None, None
    if "mean" not in d or "std" not in d:
        raise StudyError(f"{path} gives only one of mean and std; give both (the normalisation its images carry) "
                         "or neither.")
    return (tuple(float(v) for v in as_tensor(d["mean"], "mean", path).reshape(-1)),
            tuple(float(v) for v in as_tensor(d["std"], "std", path).reshape(-1)))


def from_mapping(d: dict, fmt: str, path: Path) -> RawSet:
    images = as_tensor(pick(d, IMAGE_KEYS, "images", path), "images", path)
    labels = as_tensor(pick(d, LABEL_KEYS, "labels", path), "labels", path)
    classes = d.get("classes")
    if classes is not None:
        classes = [str(c) for c in (classes.tolist() if hasattr(classes, "tolist") else classes)]
    mean, std = optional_stats(d, path)
    return RawSet(images, labels, fmt, classes, mean, std)


def read_pt(path: Path) -> RawSet:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged or foreign file
        raise StudyError(f"{path} could not be read as a PyTorch .pt file ({type(err).__name__}); "
                         "save a dict with 'images' and 'labels' tensors (see docs/external.md).") from None
    if isinstance(obj, (list, tuple)) and len(obj) == 2:
        obj = {"images": obj[0], "labels": obj[1]}
    if not isinstance(obj, dict):
        raise StudyError(f"{path} holds a {type(obj).__name__}, not a dict with 'images' and 'labels' "
                         "(or an (images, labels) pair).")
    return from_mapping(obj, "pt", path)


def read_npz(path: Path) -> RawSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as err:  # zipfile, pickle and value errors alike
        raise StudyError(f"{path} could not be read as a NumPy .npz archive ({type(err).__name__}); "
                         "write one with numpy.savez(path, images=..., labels=...).") from None
    return from_mapping(arrays, "npz", path)


def folder_labels(names: list[str], data_classes: list[str]) -> tuple[list[int], str]:
    """Class index per folder: by name when the names are the dataset's classes, by number when every name is a
    number, else in sorted order (torchvision's ImageFolder rule)."""
    if sorted(names) == sorted(data_classes):
        return [data_classes.index(n) for n in names], "folder names = dataset class names"
    if all(n.isdigit() for n in names):
        return [int(n) for n in names], "folder names are class indices"
    return list(range(len(names))), "sorted folder order"


def read_folder(path: Path, data, resize: bool) -> RawSet:
    from PIL import Image, UnidentifiedImageError

    folders = class_folders(path)
    if not folders:
        raise StudyError(f"{path} is a folder without class sub-folders; an ImageFolder tree holds one "
                         "sub-folder of images per class.")
    names = [d.name for d in folders]
    check_class_count(len(names), data, path, "class folders")
    index, rule = folder_labels(names, data.classes)
    c, h, w = data.image_shape
    mode = "L" if c == 1 else "RGB"
    images, labels = [], []
    for label, folder in zip(index, folders):
        for f in sorted(folder.iterdir()):
            if not (f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES):
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    if resize and im.size != (w, h):
                        im = im.resize((w, h), Image.BILINEAR)
                    images.append(np.asarray(im))
            except (OSError, UnidentifiedImageError):
                raise StudyError(f"{f} could not be read as an image.") from None
            labels.append(label)
    if not images:
        raise StudyError(f"The class folders of {path} hold no image files ({', '.join(IMAGE_SUFFIXES)}).")
    sizes = {a.shape[:2] for a in images}
    if len(sizes) > 1:
        raise StudyError(f"The images under {path} come in {len(sizes)} different sizes; pass resize=True to bring "
                         f"them all to {h}x{w}.")
    stacked = np.stack(images)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return RawSet(torch.from_numpy(np.ascontiguousarray(stacked)), torch.tensor(labels), "imagefolder", names,
                  notes={"label_mapping": rule})


def read_set(path: Path, data, resize: bool) -> RawSet:
    if path.is_dir():
        return read_folder(path, data, resize)
    if not path.is_file():
        raise StudyError(f"external:{path} does not exist; give a .pt or .npz file or an ImageFolder tree.")
    kind = FILE_FORMATS.get(path.suffix.lower())
    if kind is not None:
        return {"pt": read_pt, "npz": read_npz}[kind](path)
    raise StudyError(f"{path} is neither a .pt / .npz file nor a folder; those are the formats external: reads.")


# ---------------------------------------------------------------- checks


def check_class_count(found: int, data, path: Path, what: str) -> None:
    if found != data.num_classes:
        raise StudyError(f"{path} has {found} {what} but {data.name} has {data.num_classes} classes.")


def hard_labels(raw: RawSet, n: int, data, path: Path) -> torch.Tensor:
    y = raw.labels
    if y.ndim == 2 and y.shape[1] > 1:
        raise StudyError(f"The labels in {path} have shape {tuple(y.shape)}, which looks like soft labels; store one "
                         "class index per image (the harness makes its own soft labels from the teacher).")
    y = y.reshape(-1)
    if len(y) != n:
        raise StudyError(f"{path} holds {n} images but {len(y)} labels; it needs one label per image.")
    if y.dtype.is_floating_point:
        if not torch.all(y == y.round()):
            raise StudyError(f"The labels in {path} are not whole numbers; store one class index per image.")
    elif y.dtype == torch.bool or y.dtype.is_complex:
        raise StudyError(f"The labels in {path} are {y.dtype}, not class indices.")
    y = y.to(torch.int64)
    if len(y) and (y.min() < 0 or y.max() >= data.num_classes):
        raise StudyError(f"The labels in {path} run from {int(y.min())} to {int(y.max())}, outside 0.."
                         f"{data.num_classes - 1}, the classes of {data.name}.")
    present = set(torch.unique(y).tolist())
    if len(present) != data.num_classes:
        missing = sorted(set(range(data.num_classes)) - present)
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise StudyError(f"{path} holds images of {len(present)} classes but {data.name} has {data.num_classes} "
                         f"(missing: {shown}).")
    return y


def to_nchw(x: torch.Tensor, data, layout: str, path: Path) -> tuple[torch.Tensor, str]:
    c, h, w = data.image_shape
    if x.ndim == 3 and layout == "auto":
        return x.unsqueeze(1), "NHW (one channel)"
    if x.ndim != 4:
        raise StudyError(f"The images in {path} have shape {tuple(x.shape)}; expected (N, C, H, W), (N, H, W, C) "
                         "or (N, H, W).")
    if layout == "nchw":
        return x, "NCHW"
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2), "NHWC"
    if tuple(x.shape[1:]) == (c, h, w):
        return x, "NCHW"
    if tuple(x.shape[1:]) == (h, w, c):
        return x.permute(0, 3, 1, 2), "NHWC"
    first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
    if first and not last:
        return x, "NCHW"
    if last and not first:
        return x.permute(0, 3, 1, 2), "NHWC"
    raise StudyError(f"Cannot tell the channel axis of the images in {path} (shape {tuple(x.shape)}); pass "
                     "layout='nchw' or layout='nhwc'.")


def check_shape(x: torch.Tensor, data, resize: bool, path: Path) -> tuple[torch.Tensor, list | None]:
    c, h, w = data.image_shape
    if x.shape[1] != c:
        raise StudyError(f"The images in {path} have {x.shape[1]} channel(s) but {data.name}'s have {c}.")
    if tuple(x.shape[2:]) == (h, w):
        return x, None
    if not resize:
        raise StudyError(f"The images in {path} are {x.shape[2]}x{x.shape[3]} but {data.name}'s are {h}x{w}; "
                         "pass resize=True to resize them.")
    return x, list(x.shape[2:])


def to_unit(x: torch.Tensor, data, raw: RawSet, value_range: str, path: Path) -> tuple[torch.Tensor, str]:
    """Float images in [0, 1] (not yet clipped) and the rule that got them there."""
    if x.dtype == torch.uint8:
        if value_range not in ("auto", "255"):
            raise StudyError(f"The images in {path} are uint8, so their range is [0, 255], not {value_range!r}.")
        return x.float() / 255, "uint8 [0, 255]"
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise StudyError(f"The images in {path} are {x.dtype}; store uint8 or float pixels.")
    xf = x.double()
    if not torch.isfinite(xf).all():
        raise StudyError(f"The images in {path} contain NaN or infinite values.")
    lo, hi = float(xf.min()), float(xf.max())
    if not x.dtype.is_floating_point:
        if lo < 0 or hi > 255:
            raise StudyError(f"The integer images in {path} span [{lo:g}, {hi:g}], outside [0, 255].")
        return (xf / 255).float(), "integers [0, 255]"
    if raw.mean is not None:
        if value_range not in ("auto", "dataset"):
            raise StudyError(f"{path} gives mean and std, so its images are normalised, not {value_range!r}.")
        return denormalise(xf, raw.mean, raw.std, data, path), "normalised with the file's mean/std"
    mean, std = data.mean, data.std
    if value_range == "unit":
        return xf.float(), "float [0, 1] (stated)"
    if value_range == "255":
        return (xf / 255).float(), "float [0, 255] (stated)"
    if value_range == "dataset":
        return denormalise(xf, mean, std, data, path), f"normalised with {data.name}'s mean/std (stated)"
    tol = 1e-3
    if lo >= -tol and hi <= 1 + tol:
        return xf.float(), "float [0, 1]"
    if lo >= -tol and 2 <= hi <= 255 + tol:
        return (xf / 255).float(), "float [0, 255]"
    if lo < -0.05 and len(std) == x.shape[1]:
        u = denormalise(xf, mean, std, data, path)
        sample = u.reshape(-1)[:: max(1, u.numel() // 1_000_000)]
        q_lo, q_hi = torch.quantile(sample, torch.tensor([0.001, 0.999])).tolist()
        if q_lo >= -0.25 and q_hi <= 1.25:
            return u, f"normalised with {data.name}'s mean/std"
    raise StudyError(f"The float images in {path} span [{lo:.3g}, {hi:.3g}], which is clearly neither [0, 1], "
                     f"[0, 255] nor {data.name}'s mean/std normalisation; pass value_range='unit', '255' or "
                     "'dataset', or store mean and std in the file.")


def denormalise(xf: torch.Tensor, mean, std, data, path: Path) -> torch.Tensor:
    if len(mean) != xf.shape[1] or len(std) != xf.shape[1]:
        raise StudyError(f"The mean/std for {path} have {len(mean)} value(s) but its images have {xf.shape[1]} "
                         "channel(s).")
    m = torch.tensor(mean, dtype=xf.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=xf.dtype).view(1, -1, 1, 1)
    return (xf * s + m).float()


def check_counts(y: torch.Tensor, data, ipc: int, path: Path) -> int:
    counts = torch.bincount(y, minlength=data.num_classes)
    if int(counts.min()) != int(counts.max()):
        lo, hi = int(counts.argmin()), int(counts.argmax())
        raise StudyError(f"{path} holds an unequal number of images per class ({int(counts[lo])} of class "
                         f"{data.classes[lo]!r}, {int(counts[hi])} of class {data.classes[hi]!r}); the study "
                         "compares class-balanced sets at one IPC.")
    file_ipc = int(counts[0])
    if ipc != file_ipc:
        raise StudyError(f"{path} holds {file_ipc} image(s) per class, so its IPC is {file_ipc}, but the study "
                         f"asks for IPC {ipc}; set ipc={file_ipc} for this selector.")
    return file_ipc


def load_external(path: Path, data, ipc: int, resize: bool = False, value_range: str = "auto",
                  layout: str = "auto") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read and check ``path`` against ``data``; return uint8 NCHW images, int64 labels and what was found."""
    raw = read_set(path, data, resize)
    if raw.classes is not None and raw.format != "imagefolder":
        check_class_count(len(raw.classes), data, path, "classes")
    x, layout_found = to_nchw(raw.images, data, layout, path)
    y = hard_labels(raw, x.shape[0], data, path)
    x, resized_from = check_shape(x, data, resize, path)
    file_ipc = check_counts(y, data, ipc, path)
    unit, rule = to_unit(x, data, raw, value_range, path)
    if resized_from is not None:
        unit = F.interpolate(unit, size=data.image_shape[1:], mode="bilinear", antialias=True, align_corners=False)
    outside = float(((unit < 0) | (unit > 1)).float().mean())
    images = unit.clamp(0, 1).mul(255).round().to(torch.uint8).contiguous()
    found = {"format": raw.format, "layout": layout_found, "value_range": rule, "file_ipc": file_ipc,
             "clipped_fraction": outside, "resized_from": resized_from, **raw.notes}
    return images, y, found
