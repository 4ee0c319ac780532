"""Student-training throughput: ``study.core.train.train_student`` against a bare PyTorch loop on the same work.

    python benchmarks/train_throughput.py [--steps 300] [--batch-size 128] [--width 32] [--device cpu]
                                          [--precision fp32|bf16]

Both sides train the same ConvNet (``study.core.models.model_for``) on the same Fashion-MNIST random IPC-50 subset
(500 uint8 images held on the device), for the same number of steps at the same batch size, with the same
optimiser (AdamW lr 1e-3, wd 0.01, cosine schedule), the same batched on-device augmentation
(``study.core.augment.augment_batch``: per-sample random crop with padding 2 and flip), hard-label cross-entropy,
and one final test-set evaluation (10,000 images). Each side's time runs from building the model to the test
accuracy. What the bare loop leaves out is the harness: the label-regime object, the per-step loss record,
the periodic validation passes, the FLOP count of one step, and the result bookkeeping. The ratio
(train_student samples/s over bare samples/s) is the share of throughput the harness keeps; target >= 0.9.
Runs alternate between the two sides and the median of ``--repeats`` is reported, because a shared machine
makes single timings noisy; ``--clock cpu --threads 1`` times CPU seconds instead of wall seconds, which other
people's jobs on the same cores barely disturb. ``--precision bf16`` runs both sides under bf16 autocast, and
on a GPU both hold the model and batches channels_last (``study.core.precision``), so the ratio stays like for like.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from study.core.augment import augment_batch
from study.core.cache import Cache
from study.core.data import load_dataset
from study.core.evaluate import accuracy
from study.core.models import model_for
from study.core.precision import autocast, device_layout, place_model
from study.selection import SelectionContext, build_selector
from study.core.protocol import Protocol
from study.core.train import train_student


def bare_loop(x, y, data, steps, batch_size, width, device, precision, seed=0):
    """The ~20-line loop a user would write by hand for the same training."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = place_model(model_for(data, "convnet", width=width), device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    order = torch.empty(0, dtype=torch.long)
    model.train()
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(x), generator=g)])
        index, order = order[:batch_size].to(device), order[batch_size:]
        with autocast(device, precision):
            loss = F.cross_entropy(model(device_layout(augment_batch(x[index], data.augment, g), device)), y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return accuracy(model, data.test_x, data.test_y, device)


def timed(fn, clock=time.perf_counter):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = clock()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock() - start, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval-points", type=int, default=10, help="train_student's validation passes (its default: 10)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both sides alike")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this process's CPU seconds (time.process_time), steadier than wall time on a shared "
                        "machine; meaningful on CPU devices only")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    data = load_dataset(a.dataset)
    subset = build_selector("random").select(SelectionContext(data, Cache(), a.device), a.ipc, seed=0)
    samples = a.steps * a.batch_size

    def harness(steps=a.steps):
        protocol = Protocol(steps=steps, batch_size=a.batch_size, model_kwargs={"width": a.width}, regime="hl",
                            recipe="adamw-v1", precision=a.precision)
        return train_student(subset.images, subset.labels, data, protocol, device=a.device,
                             eval_points=a.eval_points).test_acc

    def bare(steps=a.steps):
        return bare_loop(subset.images, subset.labels, data, steps, a.batch_size, a.width, a.device, a.precision)

    harness(5), bare(5)  # warm-up: allocator, kernels, lazy imports
    times = {"train_student": [], "bare loop": []}
    accs = {}
    for _ in range(a.repeats):  # alternate the two sides so drifting load hits both alike
        for name, fn in (("train_student", harness), ("bare loop", bare)):
            t, accs[name] = timed(fn, time.process_time if a.clock == "cpu" else time.perf_counter)
            times[name].append(t)
    print(f"{a.dataset} convnet width {a.width}, random IPC {a.ipc} ({len(subset)} images), {a.steps} steps x "
          f"batch {a.batch_size} = {samples} samples, device {a.device}, {a.precision}, torch threads {torch.get_num_threads()}, "
          f"{a.clock} clock")
    rate = {}
    for name, ts in times.items():
        rate[name] = samples / statistics.median(ts)
        print(f"  {name:14s} {rate[name]:9.0f} samples/s  (median of {len(ts)}: "
              f"{', '.join(f'{t:.2f}' for t in ts)} s; test acc {100 * accs[name]:.2f}%)")
    print(f"  ratio train_student / bare = {rate['train_student'] / rate['bare loop']:.3f}  (target >= 0.9)")
    # Noise-free reference: a forward is about a third of a training step per image, and the harness adds its
    # validation passes (eval_points x the val split) to work both sides share (training + one test pass).
    shared = 3 * samples + len(data.test_y)
    extra = max(1, min(a.eval_points, a.steps)) * len(data.val_y)
    print(f"  expected from compute alone: {shared / (shared + extra):.3f} "
          f"({extra} validation forwards on top of {3 * samples} training + {len(data.test_y)} test forward-equivalents)")
    if accs["train_student"] == accs["bare loop"]:
        print("  same test accuracy on both sides: the harness trains exactly what the bare loop trains")


if __name__ == "__main__":
    main()
