"""Student images/s on one device for the GPU path's settings: precision, channels_last, torch.compile.

    python benchmarks/device_throughput.py                       # on a GPU: the three shapes below
    python benchmarks/device_throughput.py --device cpu --shapes convnet:32 --steps 20 --precisions fp32

Each shape is ``model:image size``: ``convnet:32`` (the DD ConvNet, CIFAR-sized), ``resnet18:64``
(Tiny-ImageNet-sized) and ``resnet18:224`` (ImageNet-sized). Data are random uint8 images of that size
(3 channels, 10 classes, ``--images`` of them held on the device), so nothing is downloaded and only speed is
measured. Each cell times ``study.core.train.train_student`` (hard labels, AdamW, crop + flip on device, one
validation pass on 256 images) after a warm-up of the same call, and prints training images/s. On CUDA the
student and batches are channels_last; ``--compile`` adds ``torch.compile`` rows (the warm-up pays the
compilation). The figure it is judged by: bf16 over fp32 images/s per shape, on the same card.
"""
from __future__ import annotations

import argparse
import time

import torch

from study.core.data import Augment, Dataset
from study.core.protocol import Protocol
from study.core.train import train_student


def random_dataset(size: int, images: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)

    def split(n):
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % 10

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = split(images), split(256), split(256)
    return Dataset(f"random-{size}px", [str(c) for c in range(10)], train_x, train_y, val_x, val_y, test_x, test_y,
                   (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), Augment(crop_padding=max(2, size // 8), flip=True))


def images_per_second(data: Dataset, model: str, device: str, precision: str, compile_model: bool, steps: int,
                      batch_size: int) -> float:
    def run(n):
        protocol = Protocol(steps=n, batch_size=batch_size, model=model, precision=precision,
                            model_kwargs={"width": 128} if model == "convnet" else {})
        return train_student(data.train_x, data.train_y, data, protocol, device=device, compile_model=compile_model,
                             eval_points=1)

    run(min(steps, 10))  # warm-up: cuDNN autotuning, allocator, compilation
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default="convnet:32,resnet18:64,resnet18:224")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd students")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--images", type=int, default=2560)
    a = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"device {a.device} ({name}), {a.steps} steps x batch {a.batch_size}, torch {torch.__version__}")
    print(f"{'model':10s} {'size':>5s} {'precision':>9s} {'compile':>7s} {'images/s':>10s}")
    for shape in a.shapes.split(","):
        model, size = shape.split(":")
        data = random_dataset(int(size), a.images)
        rates = {}
        for compiled in (False, True) if a.compile else (False,):
            for precision in a.precisions.split(","):
                rate = images_per_second(data, model, a.device, precision, compiled, a.steps, a.batch_size)
                rates[precision, compiled] = rate
                print(f"{model:10s} {size:>5s} {precision:>9s} {str(compiled):>7s} {rate:10.0f}", flush=True)
        if ("fp32", False) in rates and ("bf16", False) in rates:
            print(f"{'':10s} {'':>5s} bf16 / fp32 = {rates['bf16', False] / rates['fp32', False]:.2f}")


if __name__ == "__main__":
    main()
