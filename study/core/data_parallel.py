"""One student trained data-parallel over the ranks of a torch.distributed group (DDP).

Every rank draws the same global batch (the generators are seeded alike), runs
the student on its own contiguous slice of it, and gathers all ranks' logits,
so the label regime computes the loss of the whole batch exactly as on one
device: CutMix partners, soft-label targets and the KD teacher see every row.
all_gather's backward sums each rank's copy of that (identical) loss's
gradient into the rank's slice, and DDP averages the parameter gradients
across ranks, so every step equals the single-device step to float rounding.
The launcher (Ray Train's TorchTrainer here) sets up the process group; this
module only reads it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._functional_collectives import all_gather_tensor_autograd
from torch.nn.parallel import DistributedDataParallel

from study.core.errors import StudyError


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_data_parallel() -> bool:
    return world()[1] > 1


class DataParallel:
    """The student's forward over this rank's slice of each batch, returning the whole batch's logits."""

    def __init__(self, batch_size: int):
        self.rank, self.size = world()
        if batch_size % self.size:
            raise StudyError(f"The batch size {batch_size} must be divisible by the {self.size} data-parallel "
                             f"workers of a trial.")

    def wrap(self, model: nn.Module, device: str) -> nn.Module:
        on_gpu = torch.device(device).type == "cuda"
        return DistributedDataParallel(model, device_ids=[torch.device(device).index or 0] if on_gpu else None)

    def logits(self, model: nn.Module, views: torch.Tensor) -> torch.Tensor:
        mine = views.chunk(self.size)[self.rank]
        return all_gather_tensor_autograd(model(mine), gather_dim=0, group=dist.group.WORLD)
