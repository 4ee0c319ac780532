"""DM, distribution matching (Zhao & Bilen, WACV 2023), as a DD selector (``dm``).

Synthetic images start as real images of their class (chosen with the seed) and
are optimised so that, under a *freshly initialised* random ConvNet
(study.core.models, penultimate features) drawn at every iteration, their mean
embedding matches the mean embedding of a batch of real images of the same
class:

    loss = sum_c || mean_i f(A(x_real_c,i)) - mean_j f(A(x_syn_c,j)) ||^2

``A`` is DSA (study.core.dsa) in its Siamese form, as the release runs it
(VICO-UoE/DatasetCondensation ``main_DM.py:155-158``: one ``DiffAugment`` seed per
class, shared by that class's real and synthetic batch): at every iteration each
class draws one op of colour / crop / cutout / flip / scale / rotate and one
parameter set, applied to all of its real and synthetic images. The release
seeds each draw from the clock; here every draw comes from a generator seeded by
(seed, iteration), after that iteration's real batches. DSA works in the
normalised space DM optimises in, as the release's does, and is differentiable,
so gradients reach the synthetic pixels. Labels are hard: the class of each
image. With ``iterations=0`` the set is exactly the random selector's for the
same seed (the same real images start it), so any gain over random is DM's.

Pixel space. DM optimises images in the normalised space the network sees,
``(x - mean) / std``, with SGD, lr 1.0, momentum 0.5. We do the same (the
random ConvNet is fed the normalised images directly); on our [0, 1] pixels
this is a step of lr * std^2 per channel (about 0.14 on ``digits``, 0.12 on
Fashion-MNIST). Because the harness stores every set as uint8, pixels are
projected back into [0, 1] after every step (``clamp=True``, our addition; the
paper leaves them free) and rounded to uint8 at the end.

Defaults scaled to this machine. The release runs 20,000 iterations with 256
real images per class and a width-128 ConvNet, the students' own
(``main_DM.py:22-25``); on a GPU, pass ``iterations=20000, batch_real=256,
width=128`` to run it as released. Here ``iterations=500``, ``batch_real=64``
and ``width=32``, the width of the
digits and Fashion-MNIST students (the ConvNet's depth follows the image size
as everywhere in the harness): half the time of width 64 at the same accuracy
(benchmarks/README.md, "DM's width"). They are parameters, so part of the
selection's cache key.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from study.core.dsa import augment, draw
from study.core.errors import StudyError
from study.core.models import model_for
from study.core.seeding import derive_seed, generator
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, register_selector

@register_selector("dm")
class DM(Selector):
    family = "dd"

    @dataclass(frozen=True)
    class Params(Selector.Params):
        iterations: int = 500
        lr: float = 1.0
        momentum: float = 0.5
        batch_real: int = 64
        width: int = 32
        depth: int | None = None
        clamp: bool = True

        def check(self) -> None:
            if int(self.iterations) != self.iterations or self.iterations < 0:
                raise StudyError(f"DM needs a non-negative whole number of iterations, not {self.iterations}.")
            if self.lr <= 0:
                raise StudyError(f"DM's image learning rate must be positive, not {self.lr}.")
            if not 0 <= self.momentum < 1:
                raise StudyError(f"DM's momentum must be in [0, 1), not {self.momentum}.")
            if int(self.batch_real) != self.batch_real or self.batch_real < 1:
                raise StudyError(f"DM's real batch per class must be a positive whole number, not {self.batch_real}.")

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        start = time.perf_counter()
        images, labels, init_idx, losses = distribution_matching(ctx, ipc, seed, self.p)
        return Selection(images, labels, None, self.provenance(
            ipc, seed, init_indices=init_idx.tolist(), loss_first=losses[:1],
            loss_last=losses[-1:], loss_curve=losses[:: max(1, len(losses) // 50)],
            seconds=time.perf_counter() - start, device=ctx.device))


def class_means(features: torch.Tensor, classes: torch.Tensor, k: int) -> torch.Tensor:
    sums = torch.zeros(k, features.shape[1], device=features.device, dtype=features.dtype).index_add(0, classes, features)
    return sums / torch.bincount(classes, minlength=k).clamp_min(1).unsqueeze(1).to(features.dtype)


def siamese(x: torch.Tensor, classes: torch.Tensor, views: list) -> torch.Tensor:
    """Each class's images (grouped by class, in class order) under that class's DSA draw."""
    counts = torch.bincount(classes, minlength=len(views)).tolist()
    return torch.cat([augment(chunk, d) for chunk, d in zip(x.split(counts), views)])


def distribution_matching(ctx: SelectionContext, ipc: int, seed: int, p: DM.Params):
    """Return (uint8 images grouped by class, labels, indices of the real images used to initialise, loss curve)."""
    iterations, batch_real = int(p.iterations), int(p.batch_real)
    data, device = ctx.data, ctx.device
    k = data.num_classes
    rng = np.random.default_rng(seed)
    members = ctx.class_members()
    init_idx = np.concatenate([rng.choice(m, size=ipc, replace=False) for m in members])
    labels = torch.arange(k).repeat_interleave(ipc)

    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    real = ((data.train_x.to(device).float() / 255) - mean) / std
    syn = ((data.train_x[torch.as_tensor(init_idx)].to(device).float() / 255) - mean) / std
    syn.requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=p.lr, momentum=p.momentum)

    kwargs = {"width": p.width, **({"depth": p.depth} if p.depth else {})}
    rng_devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        net = model_for(data, "convnet", **kwargs).backbone.to(device)  # fed normalised images directly
    for p in net.parameters():
        p.requires_grad_(False)
    layers = [m for m in net.modules() if hasattr(m, "reset_parameters") and m is not net]
    size = tuple(data.image_shape[1:])
    losses = []
    for it in range(iterations):
        it_seed = derive_seed("dm", seed, it)
        with torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(it_seed)
            for layer in layers:  # a freshly initialised random network at every iteration
                layer.reset_parameters()
        g = generator(it_seed)
        picks = [m[torch.randperm(len(m), generator=g)[:batch_real].numpy()] for m in members]
        real_class = torch.cat([torch.full((len(p),), c) for c, p in enumerate(picks)])
        views = [draw(1, size, g) for _ in range(k)]  # Siamese: one draw per class, for both of its sides
        with torch.no_grad():
            real_v = siamese(real[torch.as_tensor(np.concatenate(picks), device=device)], real_class, views)
            target = class_means(net.features(real_v), real_class.to(device), k)
        syn_mean = class_means(net.features(siamese(syn, labels, views)), labels.to(device), k)
        loss = (target - syn_mean).pow(2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if p.clamp:
            with torch.no_grad():
                syn.copy_(torch.maximum(torch.minimum(syn, hi), lo))
        losses.append(loss.item() / k)
    with torch.no_grad():
        pixels = (syn.detach() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return pixels, labels, init_idx, losses
