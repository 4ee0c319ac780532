"""Loading an ImageFolder tree in a fresh process, as every selection task and trial does: listing the tree
itself, or reading the listing its study's driver published (study.core.listing).

    python benchmarks/tree_listing.py TREE --cache DIR [--size 64] [--repeats 5]

TREE is an ImageFolder tree (PATH/CLASS/IMAGE, or with train/ and val/). The first load computes the tree's
scan into DIR if it is not there (this decodes every image once); the timed loads find it cached. Each timed
load is `load_dataset` in a new Python process, timed inside it (imports excluded), alternating the two
sides; the medians are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOAD = """
import time
from study.core.data import load_dataset
clock = time.perf_counter()
data = load_dataset({name!r})
print(time.perf_counter() - clock, len(data.train_y) + len(data.val_y) + len(data.test_y))
"""

PUBLISH = """
import json
from study.core.data import listed_folders
from study.core.listing import environment, published_listings
with published_listings(listed_folders({name!r})):
    print(json.dumps(environment()))
"""


def python(code: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tree", type=Path)
    p.add_argument("--cache", type=Path, required=True, help="HARDTRUTHS_CACHE for every process")
    p.add_argument("--size", type=int, default=64, help="HARDTRUTHS_IMAGEFOLDER_SIZE")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    name = f"imagefolder:{a.tree.resolve()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HARDTRUTHS_CACHE": str(a.cache.resolve()),
           "HARDTRUTHS_IMAGEFOLDER_SIZE": str(a.size)}
    env.pop("HARDTRUTHS_TREE_LISTINGS", None)
    first, images = python(LOAD.format(name=name), env).split()
    print(f"{images} images; first load (scan computed if it was missing) {float(first):.1f} s")
    published = {**env, **json.loads(python(PUBLISH.format(name=name), env))}
    times = {"lists the tree": [], "reads the published listing": []}
    for _ in range(a.repeats):
        for side, side_env in zip(times, (env, published)):
            seconds, seen = python(LOAD.format(name=name), side_env).split()
            assert seen == images, f"{side} saw {seen} images, not {images}"
            times[side].append(float(seconds))
    for side, values in times.items():
        print(f"load_dataset, {side}: median {statistics.median(values):.2f} s "
              f"({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
