"""Seeds and hashes derived from configuration content, never from the clock.

Every random choice in a study takes a seed from :func:`derive_seed`, so the
same configuration reproduces the same subsets and the same students on any
machine, and adding a repeat never changes the earlier ones.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any, length: int = 16) -> str:
    """Stable short hash of any JSON-serialisable object."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from arbitrary JSON-serialisable parts."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
