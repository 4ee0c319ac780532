"""Model registry: the DD-standard ConvNet (instance norm, or BatchNorm as RDED / SRe2L use it), timm's ResNet-18
adapted to small inputs, any timm model.

Every model is wrapped in :class:`Classifier`, which takes float images in
[0, 1], normalises them with the dataset's statistics, and exposes the
penultimate features that selectors (herding, k-center, D2, Moderate-DS) need.
Keeping normalisation inside the model means data can stay uint8 on the device
everywhere else.
"""
from __future__ import annotations

import json
from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from study.core.errors import StudyError
from study.core.registry import Registry


def convnet_depth(image_size: int) -> int:
    """Depth 3 (the literature's) unless the input is so small that the last block would instance-normalise a
    2x2 map: four values normalised to mean 0 / std 1 carry almost no signal, and on 8x8 digits a depth-3
    ConvNet then barely trains (benchmarks/README.md, "ConvNet depth on small images")."""
    return max(1, min(3, image_size.bit_length() - 2))


NORMS = {"instance": lambda width: nn.GroupNorm(width, width, affine=True), "batch": nn.BatchNorm2d}


class ConvNet(nn.Module):
    """The ConvNet of the DD literature: [conv3x3 - norm - ReLU - avg-pool] x depth, then linear. Instance norm
    (DC/DM/MTT's) by default; batch norm is RDED's and SRe2L's CIFAR ConvNet (``convnet_bn``), whose running
    statistics SRe2L recovers images from."""

    def __init__(self, in_chans: int, num_classes: int, image_size: int, width: int = 128, depth: int | None = None,
                 norm: str = "instance"):
        super().__init__()
        depth = depth or convnet_depth(image_size)
        layers, chans, size = [], in_chans, image_size
        for _ in range(depth):
            layers += [nn.Conv2d(chans, width, 3, padding=1), NORMS[norm](width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            chans, size = width, max(1, size // 2)
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.num_features = width * size * size
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TimmBackbone(nn.Module):
    """A timm model split into features and head through timm's own forward_head(pre_logits=True)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.num_features
        self.head = model.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.head(self.features(x))


BackboneFn = Callable[..., nn.Module]
MODELS: Registry[BackboneFn] = Registry("model")


def list_models() -> list[str]:
    return MODELS.names()


@MODELS.register("convnet")
def convnet(in_chans, num_classes, image_size, width: int = 128, depth: int | None = None) -> nn.Module:
    return ConvNet(in_chans, num_classes, image_size, width=width, depth=depth)


@MODELS.register("convnet_bn")
def convnet_bn(in_chans, num_classes, image_size, width: int = 128, depth: int | None = None) -> nn.Module:
    """RDED's and SRe2L's CIFAR ConvNet (LINs-lab/RDED ``synthesize/models.py``, ``net_norm="batch"``): depth 3,
    width 128 at 32 px. See docs/sre2l.md for where it differs from the release."""
    return ConvNet(in_chans, num_classes, image_size, width=width, depth=depth, norm="batch")


def small_input_stem(model: nn.Module, in_chans: int) -> None:
    """CIFAR-style stem: a 3x3 stride-1 first conv and no max-pool, so 32x32 inputs keep their detail."""
    out = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, out, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


@MODELS.register("resnet18")
def resnet18(in_chans, num_classes, image_size) -> nn.Module:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if image_size <= 64:
        small_input_stem(model, in_chans)
    return TimmBackbone(model)


@MODELS.register("timm")
def timm_model(in_chans, num_classes, image_size, arg="", **kwargs) -> nn.Module:
    import timm

    if not arg or not timm.is_model(arg):
        raise StudyError(f"timm:{arg} is not a timm model name; see timm.list_models() for valid names.")
    return TimmBackbone(timm.create_model(arg, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs))


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@lru_cache(maxsize=32)
def _has_batchnorm(name: str, kwargs: str) -> bool:
    return bool(batchnorm_layers(create_model(name, 3, 10, 32, (0.5,) * 3, (0.5,) * 3, **json.loads(kwargs))))


def has_batchnorm(name: str, model_kwargs: dict | None = None) -> bool:
    """Whether the registered model ``name`` has BatchNorm layers, read off a small instance of it (so it holds
    for ``timm:<name>`` too), before any data is loaded."""
    return _has_batchnorm(name, json.dumps(model_kwargs or {}, sort_keys=True))


def create_model(name: str, in_chans: int, num_classes: int, image_size: int, mean, std, **kwargs) -> Classifier:
    """Build a registered model (``convnet``, ``convnet_bn``, ``resnet18``, ``timm:<name>``) with its input normalisation."""
    entry, named = MODELS.resolve(name)
    try:
        backbone = entry(in_chans, num_classes, image_size, **named, **kwargs)
    except TypeError as err:
        raise StudyError(f"Model {name!r} does not accept the options {sorted(kwargs)}: {err}.") from None
    return Classifier(backbone, mean, std)


def model_for(data, name: str = "convnet", **kwargs) -> Classifier:
    c, h, _ = data.image_shape
    return create_model(name, c, data.num_classes, h, data.mean, data.std, **kwargs)
