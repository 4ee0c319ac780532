"""Preparation on ImageFolder trees of growing size: peak memory and throughput, streamed against in memory.

Writes Fashion-MNIST as 64-px PNG ImageFolder trees (train: the first N training images; val: the first 2,000
test images), once, under ``--root``. For each size and each path it runs the same ``prepare_study`` (a
teacher loaded from a checkpoint, then entropy, herding and RDED selections at IPC 10) in a fresh process
with a fresh local Ray and a fresh cache, and samples the RSS of that process and of every Ray process it
started (psutil, every 0.2 s):

- ``streamed``: this checkout: file-backed images, the tree's scan and the teacher's outputs as Ray Data
  passes, selections reading the cached Parquet outputs and decoding only the images they keep;
- ``memory``: the code at ``--memory-commit`` (the last commit before file-backed sets, extracted with
  ``git archive`` under ``--root``) or at ``--memory-code``, which decodes the whole tree into one tensor in
  every process that loads the dataset.

    nice -n 5 python benchmarks/streamed_data.py --sizes 10000 60000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
SIDE = 64
MEMORY_COMMIT = "fec981d"  # main before the file-backed ImageFolder sets were merged


def build_tree(root: Path, n: int) -> Path:
    """Fashion-MNIST as ``root/fm64-N/{train,val}/CLASS/INDEX.png``, reused when complete."""
    tree = root / f"fm64-{n}"
    if (tree / ".complete").exists():
        return tree
    from PIL import Image

    sys.path.insert(0, str(HERE))
    from study.core.data import DEBIAN_FASHION_MNIST, FASHION_CLASSES, find_idx_files, read_idx

    files = find_idx_files([DEBIAN_FASHION_MNIST])
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split, x, y in (("train", arrays["train_x"][:n], arrays["train_y"][:n]),
                        ("val", arrays["test_x"][:2000], arrays["test_y"][:2000])):
        for c, name in enumerate(FASHION_CLASSES):
            (tree / split / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(x, y)):
            big = Image.fromarray(image).resize((SIDE, SIDE), Image.BILINEAR)
            big.save(tree / split / FASHION_CLASSES[label].replace("/", "-") / f"{i:05d}.png")
    (tree / ".complete").touch()
    return tree


class Sampler(threading.Thread):
    """Peak RSS of this process and of each process it started (Ray's workers, raylet, GCS, ...)."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.me, self.every, self.stop = psutil.Process(), every, threading.Event()
        self.driver, self.peaks, self.names, self.total = 0, {}, {}, 0

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            total = 0
            try:
                rss = self.me.memory_info().rss
                self.driver, total = max(self.driver, rss), rss
                for child in self.me.children(recursive=True):
                    try:
                        rss = child.memory_info().rss
                        command = child.cmdline()
                        # a worker starts as "python .../default_worker.py" and renames itself ray::IDLE / ray::TASK
                        worker = bool(command) and (command[0].startswith("ray::") or
                                                    any("default_worker.py" in c for c in command))
                        name = (command[0][:60] if command[0].startswith("ray::") else "ray::") \
                            if worker else child.name()
                    except psutil.Error:
                        continue
                    if rss > self.peaks.get(child.pid, 0):  # a worker's name changes with its task: keep the peak's
                        self.peaks[child.pid], self.names[child.pid] = rss, name
                    total += rss
            except psutil.Error:
                pass
            self.total = max(self.total, total)
            self.stop.wait(self.every)

    def report(self) -> dict:
        gb = 1 / 2 ** 30
        workers = {pid: p for pid, p in self.peaks.items() if self.names[pid].startswith("ray::")}
        others = {pid: p for pid, p in self.peaks.items() if pid not in workers}
        largest = sorted(workers, key=workers.get, reverse=True)
        return {"driver_gb": self.driver * gb, "total_gb": self.total * gb,
                "worker_peaks_gb": [round(workers[pid] * gb, 3) for pid in largest],
                "worker_peak_names": [self.names[pid] for pid in largest],
                "ray_system_gb": sum(others.values()) * gb}


def worker(tree: Path, cache: Path, teacher: Path, out: Path) -> None:
    """One path on one tree, in this fresh process (imports come from PYTHONPATH: this checkout or main)."""
    import ray

    from study.core.protocol import Protocol, TeacherSpec
    from study.runs.config import TrialConfig
    from trainables.prepare import prepare_study

    sampler = Sampler()
    sampler.start()
    for attempt in range(3):  # on a loaded machine the raylet can miss Ray's fixed 30 s start-up window
        try:
            ray.init(address="local", num_cpus=2, object_store_memory=1 << 30, log_to_driver=False,
                     include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    spec = TeacherSpec(model="convnet", model_kwargs={"width": 32}, path=str(teacher))
    protocol = Protocol(model="convnet", model_kwargs={"width": 32}, regime="hl", steps=20, batch_size=64)
    cells = [TrialConfig(dataset=f"imagefolder:{tree}", selector=name, ipc=10, seeds=1, protocol=protocol,
                         teacher=spec) for name in ("entropy", "herding", "rded")]
    lines: list[str] = []
    start = time.perf_counter()
    prepare_study(cells, str(cache), say=lambda line: lines.append(f"{time.perf_counter() - start:7.1f} s  {line}"))
    wall = time.perf_counter() - start
    ray.shutdown()
    sampler.stop.set()
    sampler.join()
    out.write_text(json.dumps({"wall_s": wall, "log": lines, **sampler.report()}, indent=1))


def make_teacher(root: Path) -> Path:
    import torch

    sys.path.insert(0, str(HERE))
    from study.core.models import create_model

    path = root / "teacher-convnet32-64px.pt"
    if not path.exists():
        torch.manual_seed(0)
        model = create_model("convnet", 3, 10, SIDE, (0.3,) * 3, (0.3,) * 3, width=32)
        torch.save(model.state_dict(), path)
    return path


def checkout(commit: str, root: Path) -> Path:
    """The tree of ``commit`` under ``root`` (``git archive``), made once."""
    out = root / f"code-{commit}"
    if not (out / ".complete").exists():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(HERE), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        (out / ".complete").touch()
    return out


def run(tree: Path, path: str, code: Path, teacher: Path, root: Path) -> dict:
    with tempfile.TemporaryDirectory(dir=root, prefix=f"cache-{path}-") as cache:
        out = Path(cache) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(code), "HARDTRUTHS_CACHE": cache, "HARDTRUTHS_IMAGEFOLDER_SIZE": str(SIDE),
               "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, __file__, "--worker", str(tree), cache, str(teacher), str(out)], env=env,
                       check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 60000])
    parser.add_argument("--paths", nargs="+", default=["streamed", "memory"], choices=["streamed", "memory"])
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=None,
                        help="sizes for the in-memory path (default: all); it holds the decoded set in every process")
    parser.add_argument("--root", type=Path, default=Path("/work/runs/data-bench"))
    parser.add_argument("--memory-commit", default=MEMORY_COMMIT,
                        help="commit whose code runs the in-memory path (default: the last before file-backed sets)")
    parser.add_argument("--memory-code", type=Path, default=None, help="a checkout to use instead of --memory-commit")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(*map(Path, a.worker))
        return
    a.root.mkdir(parents=True, exist_ok=True)
    teacher = make_teacher(a.root)
    memory_code = a.memory_code or (checkout(a.memory_commit, a.root) if "memory" in a.paths else None)
    rows = []
    for n in a.sizes:
        tree = build_tree(a.root, n)
        for path in a.paths:
            if path == "memory" and a.memory_sizes is not None and n not in a.memory_sizes:
                continue
            result = run(tree, path, HERE if path == "streamed" else memory_code, teacher, a.root)
            result.update(size=n, path=path, images_per_s=n / result["wall_s"])
            rows.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "log"}), flush=True)
            print("\n".join(result["log"]), flush=True)
    out = a.root / f"results-{'-'.join(map(str, a.sizes))}-{'-'.join(a.paths)}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"results: {out}")
    print("\n| path | training images | wall s | images/s | driver peak GB | largest Ray worker peak GB (which) | "
          "workers | peak total GB (driver + Ray) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        largest = f"{r['worker_peaks_gb'][0]:.2f} ({r['worker_peak_names'][0]})" if r["worker_peaks_gb"] else "-"
        print(f"| {r['path']} | {r['size']} | {r['wall_s']:.0f} | {r['images_per_s']:.1f} | {r['driver_gb']:.2f} | "
              f"{largest} | {len(r['worker_peaks_gb'])} | {r['total_gb']:.2f} |")

if __name__ == "__main__":
    main()
