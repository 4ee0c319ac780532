"""Many seeds at once: a trial's seeds trained as one vmapped model vs one after another.

    python benchmarks/batched_seeds.py [--dataset fashion-mnist] [--seeds 4] [--steps 200] [--batch-size 128]
                                       [--width 32] [--device cpu] [--threads 1] [--rounds 1]

Both sides train ``--seeds`` students (ConvNet on ``--dataset``, random IPC-10 subsets, hard labels,
AdamW, the same on-device augmentation and evaluations) for the same steps; the sequential side calls
``study.core.train.train_student`` per seed, the batched side ``study.core.batched.train_students`` once. It prints
students x samples/s for each, their ratio (target: >= 3 on a GPU, >= 1 on a CPU) and the largest
difference in test accuracy between the two (they must agree to float tolerance).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from study.core.batched import train_students
from study.core.cache import Cache
from study.core.data import load_dataset
from study.core.protocol import Protocol
from study.selection import SelectionContext, build_selector
from study.core.train import train_student


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0: torch's default)")
    p.add_argument("--rounds", type=int, default=1, help="alternate the two sides this many times; report medians")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = load_dataset(a.dataset)
    ctx = SelectionContext(data, Cache())
    subsets = [build_selector("random").select(ctx, a.ipc, seed=s) for s in range(a.seeds)]
    sets = [(s.images, s.labels) for s in subsets]
    seeds = list(range(100, 100 + a.seeds))
    protocol = Protocol(steps=a.steps, batch_size=a.batch_size, model_kwargs={"width": a.width})

    train_students(sets[:1] * 2, seeds[:2], data, protocol.replace(steps=5), device=a.device)  # warm-up
    seq_times, bat_times = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        one_by_one = [train_student(x, y, data, protocol, seed=s, device=a.device) for (x, y), s in zip(sets, seeds)]
        t1 = time.perf_counter()
        together = train_students(sets, seeds, data, protocol, device=a.device)
        seq_times.append(t1 - t0)
        bat_times.append(time.perf_counter() - t1)

    samples = a.seeds * a.steps * a.batch_size
    t_seq, t_bat = statistics.median(seq_times), statistics.median(bat_times)
    seq, bat = samples / t_seq, samples / t_bat
    gap = max(abs(x.test_acc - y.test_acc) for x, y in zip(one_by_one, together))
    print(f"{a.dataset} on {a.device}, {a.seeds} seeds x {a.steps} steps x batch {a.batch_size}, "
          f"ConvNet width {a.width}, median of {a.rounds}")
    print(f"one by one: {seq:,.0f} samples/s ({t_seq:.1f} s)")
    print(f"batched:    {bat:,.0f} samples/s ({t_bat:.1f} s)")
    print(f"ratio batched / one by one: {bat / seq:.2f}   largest test-accuracy difference: {gap:.4f}")


if __name__ == "__main__":
    main()
