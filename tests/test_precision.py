"""bf16 autocast and torch.compile are speed settings: they must train the same students to within noise."""
from __future__ import annotations

import pytest
import torch

from study.core.batched import train_students
from study.runs.config import TrialConfig
from study.core.errors import StudyError
from study.core.precision import autocast, resolve_precision
from study.core.protocol import Protocol
from study.core.train import train_student
from study.runs.validate import validate_trial


def subset(digits, n=100, seed=0):
    idx = torch.randperm(len(digits.train_y), generator=torch.Generator().manual_seed(seed))[:n]
    return digits.train_x[idx], digits.train_y[idx]


def test_auto_precision_is_bf16_only_on_cuda():
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_unknown_precision_is_refused_before_training():
    with pytest.raises(StudyError, match="Unknown precision 'fp8'"):
        validate_trial(TrialConfig.from_dict({"precision": "fp8"}))


def test_bf16_autocast_really_computes_in_bf16():
    conv = torch.nn.Conv2d(1, 4, 3)
    with autocast("cpu", "bf16"):
        assert conv(torch.randn(2, 1, 8, 8)).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert conv(torch.randn(2, 1, 8, 8)).dtype == torch.float32


@pytest.mark.parametrize("regime", ["hl", "sl_kd"])
def test_bf16_students_match_fp32_within_seed_noise(digits, digits_teacher, regime):
    """Same seed, same batches: bf16 rounding moves the loss curve a little and the accuracy by under 3 points,
    one by one and batched."""
    x, y = subset(digits)
    fp32 = Protocol(steps=300, batch_size=32, model_kwargs={"width": 32}, regime=regime, precision="fp32")
    bf16 = fp32.replace(precision="bf16")
    kw = dict(teacher=digits_teacher.model, device="cpu", eval_points=1)
    fp32, batched, bf16 = (train_student(x, y, digits, fp32, seed=1, **kw),
                           train_students([(x, y), (x, y)], [1, 2], digits, bf16, **kw)[0],
                           train_student(x, y, digits, bf16, seed=1, **kw))
    assert fp32.loss_curve != bf16.loss_curve
    assert bf16.loss_curve[-1] == pytest.approx(fp32.loss_curve[-1], abs=0.1)
    assert abs(bf16.test_acc - fp32.test_acc) < 0.03
    assert abs(batched.test_acc - bf16.test_acc) < 0.03
    assert fp32.test_acc > 0.75, fp32.test_acc


@pytest.mark.slow
def test_compiled_student_matches_eager(digits):
    """torch.compile (inductor, CPU here) fuses kernels but computes the same student: same curve to float noise."""
    x, y = subset(digits)
    kw = dict(seed=1, device="cpu", eval_points=2)
    protocol = Protocol(steps=60, batch_size=32, model_kwargs={"width": 16})
    eager = train_student(x, y, digits, protocol, **kw)
    compiled = train_student(x, y, digits, protocol, compile_model=True, **kw)
    assert compiled.loss_curve == pytest.approx(eager.loss_curve, rel=1e-3, abs=1e-4)
    assert compiled.test_acc == pytest.approx(eager.test_acc, abs=2 / len(digits.test_y))
