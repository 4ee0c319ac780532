"""Batched inference helpers shared by training, teachers and scorers."""
from __future__ import annotations

import torch
from torch import nn


def eval_chunk(device, batch_size: int | None = None) -> int:
    """Inference chunk size: 1024 images on an accelerator; 128 on CPU, where chunks that stay in cache run about
    twice as fast (measured: ConvNet on Fashion-MNIST, 1 thread) and give bit-identical logits."""
    if batch_size:
        return batch_size
    return 128 if torch.device(device).type == "cpu" else 1024


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, device, batch_size: int | None = None) -> torch.Tensor:
    """Logits of uint8 images, computed in eval mode in chunks, returned on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(chunk.to(device, non_blocking=True).float().div_(255)).float().cpu()
           for chunk in images.split(eval_chunk(device, batch_size))]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def predict_features(model: nn.Module, images: torch.Tensor, device, batch_size: int | None = None) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = [model.features(chunk.to(device).float().div_(255)).float().cpu()
           for chunk in images.split(eval_chunk(device, batch_size))]
    model.train(was_training)
    return torch.cat(out)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device,
             batch_size: int | None = None) -> float:
    logits = predict_logits(model, images, device, batch_size)
    return (logits.argmax(1) == labels).float().mean().item()
