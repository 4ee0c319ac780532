"""The content-addressed cache: reuse by key, and corrupted bytes detected (one log line) and recomputed."""
from __future__ import annotations

import logging

import pytest
import torch

from study.core.cache import Cache
from study.core.teacher import TeacherSpec, get_teacher

CODE = ["study.selection.scores"]
KEY = {"kind": "scores", "dataset": "digits", "seed": 3, "params": {"b": 1, "a": [1, 2]}}


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"scores": torch.arange(1000, dtype=torch.float32) * self.calls, "note": "ok"}



def cache_warnings(caplog):
    return [r for r in caplog.records if r.name == "study.core.cache" and r.levelno >= logging.WARNING]


def test_reuse_by_content_key(tmp_path):
    cache, compute = Cache(tmp_path), Counter()
    first = cache.get_or_compute("scores", KEY, compute, code=CODE)
    reordered = {"params": {"a": [1, 2], "b": 1}, "seed": 3, "dataset": "digits", "kind": "scores"}
    again = cache.get_or_compute("scores", reordered, compute, code=CODE)
    assert compute.calls == 1 and torch.equal(first["scores"], again["scores"])
    cache.get_or_compute("scores", {**KEY, "seed": 4}, compute, code=CODE)
    assert compute.calls == 2
    assert len(list((tmp_path / "scores").glob("*.pt"))) == 2
    assert not list((tmp_path / "scores").glob("*.tmp"))  # atomic writes leave no temporaries behind


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar"])
def test_corrupted_entry_is_detected_and_recomputed(tmp_path, caplog, damage):
    cache, compute = Cache(tmp_path), Counter()
    cache.get_or_compute("scores", KEY, compute, code=CODE)
    payload, sidecar = cache.paths("scores", KEY, CODE)
    if damage == "flip":
        data = bytearray(payload.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one byte deep inside the tensor storage: torch.load would not notice
        payload.write_bytes(bytes(data))
    elif damage == "truncate":
        payload.write_bytes(payload.read_bytes()[:100])
    else:
        sidecar.write_text('{"sha256": ')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="study.core.cache"):
        value = cache.get_or_compute("scores", KEY, compute, code=CODE)
    assert compute.calls == 2, "the damaged entry must be recomputed, not trusted"
    assert torch.equal(value["scores"], torch.arange(1000, dtype=torch.float32) * 2)
    warnings = cache_warnings(caplog)
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert str(payload) in warnings[0].getMessage()
    # The recomputed entry was stored again and is trusted on the next call, silently.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="study.core.cache"):
        cache.get_or_compute("scores", KEY, compute, code=CODE)
    assert compute.calls == 2 and not cache_warnings(caplog)


def test_missing_sidecar_means_not_cached(tmp_path):
    cache, compute = Cache(tmp_path), Counter()
    cache.get_or_compute("scores", KEY, compute, code=CODE)
    cache.paths("scores", KEY, CODE)[1].unlink()  # as after a kill between the payload and its sidecar
    assert cache.load("scores", KEY, code=CODE) is None
    cache.get_or_compute("scores", KEY, compute, code=CODE)
    assert compute.calls == 2


def test_corrupted_teacher_is_retrained_identically(tmp_path, caplog, digits):
    spec = TeacherSpec(model_kwargs={"width": 8}, epochs=2)
    cache = Cache(tmp_path)
    first = get_teacher(digits, spec, cache, device="cpu")
    (entry,) = (tmp_path / "teachers").glob("*.pt")
    data = bytearray(entry.read_bytes())
    data[-200] ^= 0x01
    entry.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="study.core.cache"):
        second = get_teacher(digits, spec, cache, device="cpu")
    assert len(cache_warnings(caplog)) == 1
    assert second.test_acc == first.test_acc
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def slow_count(root: str, log: str) -> float:
    """Compute one shared entry slowly, noting each real computation in ``log``."""
    import time

    def compute():
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(0.5)
        return torch.tensor([7.0])

    return float(Cache(root).get_or_compute("shared", {"k": 1}, compute, code=CODE)[0])


def test_processes_needing_one_entry_compute_it_once(tmp_path):
    import multiprocessing as mp

    log = tmp_path / "log.txt"
    with mp.get_context("spawn").Pool(3) as pool:
        values = pool.starmap(slow_count, [(str(tmp_path / "cache"), str(log))] * 3)
    assert values == [7.0, 7.0, 7.0]
    assert log.read_text().count("computed") == 1
