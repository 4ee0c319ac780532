"""Shared fixtures: real data, a per-session cache, and a real local Ray that is always shut down."""
from __future__ import annotations

import faulthandler
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# What a loader caches without being given a cache (an ImageFolder tree's scan) goes to a folder of this session,
# set before study.core.cache is imported and inherited by the Ray workers the tests start.
SESSION_CACHE = tempfile.mkdtemp(prefix="hardtruths-tests-")
os.environ["HARDTRUTHS_CACHE"] = SESSION_CACHE


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Keep the fault handler on after pytest's own plugin turns it off: one CI run (session 8) died with a
    segmentation fault after all tests had passed, while the interpreter shut down, with no trace of where."""
    faulthandler.enable()


@pytest.fixture(autouse=True, scope="session")
def session_cache():
    yield SESSION_CACHE
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite's models are tiny: on a 2-core machine a second intra-op thread only spins (5-10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    from study.core.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits_teacher(digits, cache_dir):
    from study.core.cache import Cache
    from study.core.teacher import TeacherSpec, get_teacher

    return get_teacher(digits, TeacherSpec(**TEST_TEACHER), Cache(cache_dir), device="cpu")


@pytest.fixture(scope="session")
def digits_bn_teacher(digits, cache_dir):
    """A BatchNorm teacher (SRe2L recovers from its running statistics)."""
    from study.core.cache import Cache
    from study.core.teacher import TeacherSpec, get_teacher

    return get_teacher(digits, TeacherSpec(**TEST_BN_TEACHER), Cache(cache_dir), device="cpu")


TEST_TEACHER = {"model": "convnet", "model_kwargs": {"width": 32}, "epochs": 30}
TEST_BN_TEACHER = {"model": "convnet_bn", "model_kwargs": {"width": 32}, "epochs": 30}


def write_idx(path, array) -> None:
    """An IDX file as Fashion-MNIST ships it: zero, zero, the uint8 type code, the rank, big-endian sizes, bytes."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.fixture(scope="session")
def fashion_mnist_root(tmp_path_factory):
    """A small Fashion-MNIST in its released format (IDX files, 28 x 28, ten classes of 120 training images),
    for tests that need the loader, the preset and the class sizes but not the real garments; pass it as
    ``--data-root``, which the loader searches before Debian's package."""
    import numpy as np

    root = tmp_path_factory.mktemp("fashion-mnist-idx")
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", 120), ("t10k", 20)):
        labels = np.repeat(np.arange(10), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 28, 28))
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return str(root)
