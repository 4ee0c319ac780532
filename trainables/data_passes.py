"""Full-set passes as Ray Data pipelines: decoding in CPU tasks, the model in actors, on every node.

:func:`ray_data_pass` has the signature of ``study.core.passes.in_process`` and is installed with
``study.core.passes.use_pass_runner``. Rows are (index, path) for a file-backed split, or bare indices into an
in-memory split put once in the object store. Decoding runs as stateless tasks (``map_batches`` with a
function); the pass's work (a model's logits and features, the tree's scan) runs in actors
(``map_batches`` with a callable class), one per GPU where there are GPUs, else one per CPU, so each model is
loaded once per actor; Parquet parts are written by Ray Data's write tasks straight to the cache folder, so the
driver never holds the outputs.
The pipeline streams: memory is bounded by the blocks in flight, not by the size of the split.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from study.core.images import FileImages, decode_paths
from study.core.passes import columns, use_pass_runner

ROWS_PER_BLOCK = 1024


def decode_rows(batch: dict[str, np.ndarray], size: int, bad_images: str) -> dict[str, np.ndarray]:
    images, ok = decode_paths(batch["path"], size, bad_images)
    return {"index": batch["index"], "image": images.numpy(), "ok": ok}


def slice_rows(batch: dict[str, np.ndarray], images_ref) -> dict[str, np.ndarray]:
    images = ray.get(images_ref[0])
    return {"index": batch["index"], "image": images[batch["index"]], "ok": np.ones(len(batch["index"]), bool)}


class RunWork:
    """An actor holding one bound copy of the pass's work (a model on this actor's device)."""

    def __init__(self, work, device: str):
        self.fn = work.bind(device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        outputs = self.fn(torch.from_numpy(np.ascontiguousarray(batch["image"])), batch["ok"], batch["index"])
        return pa.table({"index": pa.array(batch["index"]), **columns(outputs)})


def source_rows(images) -> tuple["ray.data.Dataset", object]:
    """The pass's rows in blocks of ``ROWS_PER_BLOCK``, and the decoding step that turns them into images."""
    n = len(images)
    index = np.arange(n)
    blocks = [slice(start, start + ROWS_PER_BLOCK) for start in range(0, n, ROWS_PER_BLOCK)]
    if isinstance(images, FileImages):
        tables = [pa.table({"index": index[b], "path": pa.array(images.paths[b].astype(str))}) for b in blocks]
        return ray.data.from_arrow(tables), dict(fn=decode_rows, fn_kwargs={"size": images.size,
                                                                           "bad_images": images.bad_images})
    ref = ray.put(images.numpy())
    tables = [pa.table({"index": index[b]}) for b in blocks]
    return ray.data.from_arrow(tables), dict(fn=slice_rows, fn_kwargs={"images_ref": [ref]})


def ray_data_pass(images, work, out_dir: Path, batch_size: int, device: str) -> None:
    """Decode in CPU tasks, run ``work`` in actors, write Parquet parts. The actors are one per GPU, else one
    per CPU, each decoding its own batches (Ray Data fuses the two steps when both ask for one CPU). The write
    tasks ask for no CPU: they only append Arrow tables to files, and when they asked for one, actors on every
    CPU left them none and the 60 k-image benchmark stalled (both actors at ~20 % CPU, no output for minutes)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = gpus or max(1, int(resources.get("CPU", 1)))
    rows, decode = source_rows(images)
    decoded = rows.map_batches(decode["fn"], fn_kwargs=decode["fn_kwargs"], batch_size=batch_size, num_cpus=1)
    outputs = decoded.map_batches(RunWork, fn_constructor_args=(work, "cuda" if gpus else "cpu"),
                                  batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                                  num_gpus=1 if gpus else 0, num_cpus=1, batch_format="numpy")
    outputs.write_parquet(str(out_dir), ray_remote_args={"num_cpus": 0})


@contextlib.contextmanager
def ray_passes():
    """Full-set passes started in this process (the driver's preparation) run as Ray Data pipelines."""
    context = ray.data.DataContext.get_current()
    shown, context.enable_progress_bars = context.enable_progress_bars, False
    try:
        with use_pass_runner(ray_data_pass):
            yield
    finally:
        context.enable_progress_bars = shown


def prepare_tree_in_driver(cfg, cache_dir, teacher_outputs: bool) -> bool:
    """For an ImageFolder study, its tree's scan, and with ``teacher_outputs`` and a pretrained teacher the
    teacher's outputs and test accuracy, as one Ray Data pass here, before any task loads the set; True if the
    set is file-backed. An in-memory set is small and is loaded by each task as before."""
    from study.core.cache import Cache
    from study.core.data import image_folder_path
    from study.core.tree_pass import prepare_tree

    path = image_folder_path(cfg.dataset)
    if path is None:
        return False
    with ray_passes():
        prepare_tree(str(path), cfg.teacher if teacher_outputs else None, Cache(cache_dir))
    return True


def teacher_pass_in_driver(cfg, cache_dir) -> None:
    """The outputs of a teacher trained by the preparation, as a Ray Data pass, before the selection tasks
    that read them from the cache (inside a task the pass would run in that one process); a pretrained
    teacher's came with the tree's scan, and this finds them cached."""
    from study.runs.trial import context_for

    with ray_passes():
        context_for(cfg, cache_dir, "cpu").teacher_outputs
