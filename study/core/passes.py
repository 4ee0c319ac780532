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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from study.core.images import FileImages, decode_paths

READ_ROWS = 4096  # rows a reader holds at once


class BatchWork(Protocol):
    """A pass's per-batch work; ``bind`` is called once per worker (say, to move a model to its device). The
    bound function takes a batch's uint8 images, which of them decoded, and their rows in the pass (for work
    with per-row inputs, such as each candidate's crop boxes)."""

    def bind(self, device: str) -> Callable[[torch.Tensor, np.ndarray, np.ndarray], dict[str, np.ndarray]]: ...


@dataclass(frozen=True)
class Together:
    """Several passes' work as one, so a pass that needs them all decodes each image once."""

    works: tuple

    def bind(self, device: str):
        fns = [work.bind(device) for work in self.works]
        return lambda *batch: {name: values for fn in fns for name, values in fn(*batch).items()}


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


def write_tables(tables, out_dir: Path) -> None:
    """Append ``tables`` to one Parquet file, renamed into place only once complete."""
    writer, tmp = None, out_dir / "part-0.parquet.tmp"
    for table in tables:
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table)
    if writer is not None:
        writer.close()
        tmp.rename(out_dir / "part-0.parquet")


def in_process(images, work: BatchWork, out_dir: Path, batch_size: int, device: str) -> None:
    """Decode and compute here, one batch at a time, appending to one Parquet file."""
    fn, n = work.bind(device), len(images)

    def tables():
        for start in range(0, n, batch_size):
            index = np.arange(start, min(start + batch_size, n))
            if isinstance(images, FileImages):
                batch, ok = decode_paths(images.paths[index], images.size, images.bad_images)
            else:
                batch, ok = images[torch.as_tensor(index)], np.ones(len(index), dtype=bool)
            yield pa.table({"index": pa.array(index), **columns(fn(batch, ok, index))})

    write_tables(tables(), out_dir)


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


def placed_batches(src: Path, columns: list[str], rows: np.ndarray | None = None):
    """The pass at ``src`` one record batch at a time, each with the output position of its rows: a row's own
    index, or, given ``rows``, ``i`` for row ``rows[i]`` (other rows left out). Parts come in any order (Ray
    Data writes them as they finish); placing rows by position never holds the table twice, and reading a few
    row groups at a time, not even once: reading 59 k x 2048 features into their array peaked at 1.19 GB with
    pyarrow's default read-ahead and pre-buffering, 0.66 GB without."""
    source = ds.dataset(src, format="parquet")
    if rows is None:
        position = np.arange(source.count_rows())
    else:
        position = np.full(source.count_rows(), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
    unbuffered = ds.ParquetFragmentScanOptions(pre_buffer=False)  # pre-buffering read a 0.5 GB column whole
    for batch in source.to_batches(columns=["index", *columns], batch_size=READ_ROWS, batch_readahead=1,
                                   fragment_readahead=1, fragment_scan_options=unbuffered):
        target = position[batch.column("index").to_numpy()]
        keep = target >= 0
        yield target[keep], batch.filter(pa.array(keep))


def as_numpy(column: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def read_pass(out_dir: Path, columns: list[str] | None = None, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A pass's ``columns`` (all by default) in index order, or at ``rows`` only, in that order; list columns
    come back as (N, D) arrays."""
    source = ds.dataset(out_dir, format="parquet")
    names = columns or [name for name in source.schema.names if name != "index"]
    n = source.count_rows() if rows is None else len(rows)
    out: dict[str, np.ndarray] = {}
    for target, batch in placed_batches(out_dir, names, rows):
        for name in names:
            values = as_numpy(batch.column(name))
            if name not in out:
                out[name] = np.empty((n, *values.shape[1:]), values.dtype)
            out[name][target] = values
    return out


class PassColumns(Mapping):
    """A pass's columns as tensors in index order, each read from the cache the first time it is asked for."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.read = out_dir, {}
        self.names = [name for name in ds.dataset(out_dir, format="parquet").schema.names if name != "index"]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        if name not in self.read:
            self.read[name] = torch.from_numpy(read_pass(self.out_dir, [name])[name])
        return self.read[name]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def copy_rows(src: Path, out_dir: Path, rows: np.ndarray, columns: list[str]) -> None:
    """Write at ``out_dir`` a pass whose row ``i`` is row ``rows[i]`` of the pass at ``src`` (``columns`` only),
    one record batch at a time: a split's share of a pass over a whole tree, without holding the whole table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tables((pa.Table.from_batches([batch]).set_column(0, "index", pa.array(target))
                  for target, batch in placed_batches(src, columns, rows)), out_dir)
