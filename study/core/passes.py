"""Full-set passes: one function per batch of decoded images, run over a whole split, written as Parquet.

A pass (the tree's scan, the teacher's logits and features) reads every image once. What it does per batch is
a plain :class:`BatchWork`; how the batches are produced and where the work runs is the runner's business. The
default runner decodes and computes in this process. ``trainables.data_passes`` installs a Ray Data runner
(decoding in CPU tasks, the work in actors, on every node) with :func:`use_pass_runner`; this package knows
nothing of Ray. Either way the output is one Parquet table in the cache, with an ``index`` column, read back in
index order, so a selector's process never holds the images, only the per-sample outputs.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from study.core.images import FileImages


class BatchWork(Protocol):
    """A pass's per-batch work; ``bind`` is called once per worker (say, to move a model to its device)."""

    def bind(self, device: str) -> Callable[[torch.Tensor, np.ndarray], dict[str, np.ndarray]]: ...


def columns(outputs: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Per-sample outputs as Arrow columns: a vector per sample becomes a fixed-size list."""
    out = {}
    for name, values in outputs.items():
        values = np.ascontiguousarray(values)
        if values.ndim == 1:
            out[name] = pa.array(values)
        else:
            flat = pa.array(values.reshape(-1))
            out[name] = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))
    return out


def in_process(images, work: BatchWork, out_dir: Path, batch_size: int, device: str) -> None:
    """Decode and compute here, one batch at a time, appending to one Parquet file."""
    fn, writer = work.bind(device), None
    tmp = out_dir / "part-0.parquet.tmp"
    n = len(images)
    for start in range(0, n, batch_size):
        index = np.arange(start, min(start + batch_size, n))
        if isinstance(images, FileImages):
            from study.core.images import decode_paths

            batch, ok = decode_paths(images.paths[index], images.size, images.bad_images)
        else:
            batch, ok = images[torch.as_tensor(index)], np.ones(len(index), dtype=bool)
        table = pa.table({"index": pa.array(index), **columns(fn(batch, ok))})
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
        tmp.rename(out_dir / "part-0.parquet")


PassRunner = Callable[..., None]
_runner: PassRunner = in_process


@contextlib.contextmanager
def use_pass_runner(runner: PassRunner):
    """Run the passes started inside the block with ``runner`` (same signature as :func:`in_process`)."""
    global _runner
    previous, _runner = _runner, runner
    try:
        yield
    finally:
        _runner = previous


def run_pass(images, work: BatchWork, out_dir: Path, batch_size: int = 256, device: str = "cpu") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _runner(images, work, out_dir, batch_size, device)


def read_pass(out_dir: Path) -> dict[str, np.ndarray]:
    """A pass's columns in index order; list columns come back as (N, D) float arrays."""
    table = pq.read_table(out_dir).sort_by("index")
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            out[name] = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out
