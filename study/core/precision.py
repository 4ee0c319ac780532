"""Numeric precision and memory layout of student training on a device.

On a recent GPU, bf16 autocast and channels_last memory roughly double a
ConvNet's throughput; on CPU both slow training down. ``auto`` therefore means
bf16 on CUDA and fp32 elsewhere. Precision is part of a trial's identity (it
can move an accuracy by a few tenths); the memory layout and ``torch.compile``
change speed, not what is computed, so they are execution settings.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from study.core.errors import StudyError

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise StudyError(f"Unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}.")


def resolve_precision(precision: str, device: str) -> str:
    check_precision(precision)
    if precision == "auto":
        return "bf16" if on_cuda(device) else "fp32"
    return precision


def autocast(device: str, precision: str):
    """The forward-pass context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def on_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def device_layout(x: torch.Tensor, device: str) -> torch.Tensor:
    """A 4-D image batch in the layout the device's convolutions are fastest on."""
    return x.contiguous(memory_format=torch.channels_last) if on_cuda(device) and x.dim() == 4 else x


def place_model(model: nn.Module, device: str) -> nn.Module:
    """A model on the device, in the layout its convolutions are fastest in there."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if on_cuda(device) else model
