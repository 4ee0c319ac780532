"""One pass over an ImageFolder tree decodes each image once for everything a study's preparation needs of it.

Loading a tree needs each listed folder's scan (channel statistics, unreadable files); selectors that read a
pretrained teacher's outputs need its logits and features of every training image, and the study reports its
test accuracy. Run one after the other they decode the tree two or three times. A pretrained teacher does not
depend on the scan (its normalisation is part of its weights), so :func:`prepare_tree` runs both in one pass
over every listed file and then writes each result where its reader already looks: the scans where the loader
does (study.core.data), the outputs where :func:`study.core.teacher.teacher_outputs` does, the accuracy where
:func:`study.core.teacher.load_pretrained` does. A teacher trained here needs the statistics before it exists,
so it keeps the scan and its outputs as two passes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from study.core import data as data_mod
from study.core.cache import Cache
from study.core.data import SCAN_CODE, SCAN_COLUMNS, ScanWork, listed_rows, scan_key, split_dirs, tree_path
from study.core.evaluate import eval_chunk
from study.core.images import FileImages
from study.core.listing import folder_listing
from study.core.models import create_model
from study.core.passes import Together, copy_rows, read_pass, run_pass
from study.core.protocol import TeacherSpec
from study.core.teacher import CODE, ModelOutputs, accuracy_key, load_weights, outputs_key


def pretrained(spec: TeacherSpec, classes: int, size: int):
    """The checkpoint's model, built without the dataset: the loaded weights bring their own normalisation."""
    model = create_model(spec.model, 3, classes, size, (0.0,) * 3, (1.0,) * 3, **spec.model_kwargs)
    return load_weights(model, spec)


def prepare_tree(arg: str, spec: TeacherSpec | None, cache: Cache, device: str = "cpu") -> None:
    """Scan the tree ``imagefolder:ARG`` and, given a pretrained teacher, compute its outputs and test accuracy,
    in one pass; a no-op when all of them are cached. Bad files are refused or left out afterwards, by the
    loader, as the scan alone would have them."""
    size, scans = data_mod.IMAGEFOLDER_SIZE, Cache()
    listings = [folder_listing(folder) for folder in split_dirs(tree_path(arg))]
    keys = [scan_key(listing, size) for listing in listings]
    model = pretrained(spec, len(listings[0].mapping), size) if spec is not None and spec.path else None
    if all(scans.has_folder("scans", key, code=SCAN_CODE) for key in keys) and (model is None or teacher_ready(arg, spec, cache)):
        return
    every = np.concatenate([listing.paths for listing in listings])
    work = ScanWork() if model is None else Together((ScanWork(), ModelOutputs(model)))
    cache.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.root, prefix=".tree-pass-") as tmp:
        run_pass(FileImages(every, size, bad_images="skip"), work, Path(tmp), batch_size=eval_chunk(device),
                 device=device)
        bounds = np.cumsum([0, *(len(listing.paths) for listing in listings)])
        for key, lo, hi in zip(keys, bounds, bounds[1:]):
            scans.folder("scans", key, lambda out: copy_rows(Path(tmp), out, np.arange(lo, hi), SCAN_COLUMNS),
                         code=SCAN_CODE)
        if model is None:
            return
        data = data_mod.load_dataset(f"imagefolder:{arg}")  # reads the scans: refuses or leaves out bad files
        cache.folder("passes", outputs_key(data, spec),
                     lambda out: copy_rows(Path(tmp), out, listed_rows(every, data.train_x.paths),
                                           ["logits", "features"]), code=CODE)
        logits = read_pass(Path(tmp), ["logits"], listed_rows(every, data.test_x.paths))["logits"]
        accuracy = (torch.from_numpy(logits).argmax(1) == data.test_y).float().mean().item()
        cache.store("teachers", accuracy_key(data, spec), {"test_acc": accuracy}, code=CODE)


def teacher_ready(arg: str, spec: TeacherSpec, cache: Cache) -> bool:
    data = data_mod.load_dataset(f"imagefolder:{arg}")
    return cache.has_folder("passes", outputs_key(data, spec), code=CODE) and \
        cache.load("teachers", accuracy_key(data, spec), code=CODE, warn=False) is not None
