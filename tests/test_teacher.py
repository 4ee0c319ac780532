"""Teachers: accurate on real data, training dynamics recorded, cached by content, pretrained weights loadable."""
from __future__ import annotations

import time

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from study.core.cache import Cache
from study.core.data import load_dataset
from study.core.errors import StudyError
from study.core.evaluate import accuracy
from study.core.teacher import DYNAMICS, TeacherSpec, get_teacher, train_teacher

from conftest import TEST_TEACHER

# The suite's shared digits teacher (conftest.TEST_TEACHER: convnet width 32, 30 epochs, about 97% here) is the
# one that must clear the 95% bar; reusing its spec reuses its session cache entry, so this costs no training.
DIGITS_TEACHER = TEST_TEACHER
# The Fashion-MNIST teacher of the slow test. Measured (1 thread): 8 epochs 90.7%, 12 epochs 91.2% in 660 CPU-s.
FASHION_TEACHER = dict(model_kwargs={"width": 32}, epochs=12, batch_size=128, lr=3e-3)



@pytest.fixture(scope="module")
def teacher(one_thread, digits, cache_dir):
    return get_teacher(digits, TeacherSpec(**DIGITS_TEACHER), Cache(cache_dir), device="cpu")


def test_digits_teacher_reaches_95_percent(teacher, digits):
    assert teacher.test_acc >= 0.95
    # The recorded accuracy is the model's: recompute it from the returned weights.
    assert accuracy(teacher.model, digits.test_x, digits.test_y, "cpu") == pytest.approx(teacher.test_acc)
    assert not teacher.model.training


@pytest.mark.slow
def test_default_teacher_spec_on_digits_reaches_95_percent(one_thread, digits):
    result = train_teacher(digits, TeacherSpec(), device="cpu")  # convnet width 128, adamw-v1, 50 epochs
    assert result.test_acc >= 0.95


def test_training_dynamics_are_recorded_per_epoch(teacher, digits):
    n, epochs = len(digits.train_y), DIGITS_TEACHER["epochs"]
    assert set(teacher.dynamics) == set(DYNAMICS)
    for name, values in teacher.dynamics.items():
        assert values.shape == (epochs, n), name
        assert torch.isfinite(values.float()).all(), name
    d = {k: v.float() for k, v in teacher.dynamics.items()}
    assert set(d["correct"].unique().tolist()) <= {0.0, 1.0}
    assert (d["p_true"] >= 0).all() and (d["p_true"] <= 1).all()
    assert (d["margin"] >= -1).all() and (d["margin"] <= 1).all()
    assert (d["loss"] >= 0).all() and (d["el2n"] >= 0).all() and (d["el2n"] <= 2 ** 0.5 + 1e-2).all()
    assert torch.equal(d["correct"], (d["logit_margin"] > 0).float())
    # The model learns: later epochs are right more often than the first, with lower loss.
    assert d["correct"][-1].mean() > d["correct"][0].mean() and d["loss"][-1].mean() < d["loss"][0].mean()
    # The last record is a clean pass of the final weights over the training split.
    assert d["correct"][-1].mean().item() == pytest.approx(accuracy(teacher.model, digits.train_x, digits.train_y,
                                                                    "cpu"), abs=1e-6)


def test_teacher_is_cached_by_content(teacher, digits, cache_dir):
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        again = get_teacher(digits, TeacherSpec(**DIGITS_TEACHER), Cache(cache_dir), device="cpu")
    finally:
        handle.remove()
    assert not steps, "a cached teacher must not train again"
    assert again.test_acc == teacher.test_acc
    for a, b in zip(teacher.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    for k in DYNAMICS:
        assert torch.equal(again.dynamics[k], teacher.dynamics[k])


def test_pretrained_weights_are_loaded_instead_of_training(teacher, digits, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": teacher.model.state_dict()}, path)
    spec = TeacherSpec(**DIGITS_TEACHER, path=str(path))
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(1))
    try:
        loaded = get_teacher(digits, spec, Cache(tmp_path / "unused"), device="cpu")
    finally:
        handle.remove()
    assert not steps, "pretrained weights are loaded, never trained"
    assert loaded.test_acc == pytest.approx(teacher.test_acc) and loaded.dynamics == {}
    torch.save(teacher.model.state_dict(), tmp_path / "bare.pt")  # a plain state dict works too
    assert get_teacher(digits, TeacherSpec(**DIGITS_TEACHER, path=str(tmp_path / "bare.pt")),
                       device="cpu").test_acc == pytest.approx(teacher.test_acc)
    assert not (tmp_path / "unused").exists()


def test_bad_pretrained_weights_are_one_sentence(teacher, digits, tmp_path):
    with pytest.raises(StudyError, match="could not be read"):
        get_teacher(digits, TeacherSpec(path=str(tmp_path / "missing.pt")), device="cpu")
    torch.save(teacher.model.state_dict(), tmp_path / "w32.pt")
    with pytest.raises(StudyError, match="do not fit"):  # width-32 weights into the default width-128 model
        get_teacher(digits, TeacherSpec(path=str(tmp_path / "w32.pt")), device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save(teacher.model, tmp_path / "whole.pt")  # a pickled module, not a state dict
    for name in ("junk.pt", "whole.pt"):
        with pytest.raises(StudyError) as err:
            get_teacher(digits, TeacherSpec(path=str(tmp_path / name)), device="cpu")
        assert "\n" not in str(err.value) and "state_dict()" in str(err.value)


@pytest.mark.slow
def test_fashion_mnist_convnet_teacher_reaches_90_percent(one_thread, tmp_path):
    if not __import__("study.core.data", fromlist=["data"]).DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load_dataset("fashion-mnist")
    start = time.perf_counter()
    result = get_teacher(data, TeacherSpec(**FASHION_TEACHER), Cache(tmp_path), device="cpu")
    print(f"fashion-mnist teacher {FASHION_TEACHER}: {100 * result.test_acc:.2f}% in "
          f"{time.perf_counter() - start:.0f} s")
    assert result.test_acc >= 0.90
    assert result.dynamics["correct"].shape == (FASHION_TEACHER["epochs"], 59000)
