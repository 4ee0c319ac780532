"""SRe2L's recovery, the BatchNorm ConvNet it needs, and the RDED / SRe2L authors' evaluation recipe."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from search_spaces import PRESETS
from study.core.batched import train_students
from study.core.errors import StudyError
from study.core.models import batchnorm_layers, create_model, has_batchnorm, model_for
from study.core.protocol import Protocol, batch_size_for
from study.core.recipes import get_recipe
from study.core.regimes import build_regime
from study.core.train import train_student
from study.runs.config import TrialConfig
from study.runs.spec import resolve_spec
from study.runs.validate import validate_trial
from study.selection import SelectionContext, build_selector
from study.selection.sre2l import batch_statistics_gap
from conftest import TEST_BN_TEACHER, TEST_TEACHER


def test_convnet_bn_is_the_authors_batchnorm_convnet(digits):
    model = model_for(digits, "convnet_bn")
    x = torch.rand(4, 1, 8, 8)
    assert model(x).shape == (4, 10) and model.features(x).shape == (4, model.backbone.num_features)
    cifar = create_model("convnet_bn", 3, 10, 32, (0.5,) * 3, (0.25,) * 3)
    assert len(batchnorm_layers(cifar)) == 3 and cifar.backbone.num_features == 128 * 4 * 4
    assert has_batchnorm("convnet_bn") and has_batchnorm("resnet18") and not has_batchnorm("convnet")


@pytest.fixture(scope="module")
def bn_ctx(digits, digits_bn_teacher, cache_dir):
    from study.core.cache import Cache

    return SelectionContext(digits, Cache(cache_dir), "cpu", teacher_factory=lambda: digits_bn_teacher)


def test_recovered_images_are_their_class_and_match_the_running_statistics(bn_ctx, digits, digits_bn_teacher):
    ipc = 4
    selection = build_selector("sre2l", iterations=60).select(bn_ctx, ipc, seed=3)
    teacher = digits_bn_teacher.model.eval()
    with torch.no_grad():
        predicted = teacher(selection.images.float() / 255).argmax(1)
    assert (predicted == selection.labels).float().mean() >= 0.9

    backbone = teacher.backbone
    normalise = lambda x: (x - teacher.mean) / teacher.std  # noqa: E731
    recovered = batch_statistics_gap(backbone, normalise(selection.images.float() / 255)).squeeze(1)
    noise = batch_statistics_gap(backbone, torch.randn(len(selection.labels), *digits.image_shape,
                                                       generator=torch.Generator().manual_seed(3))).squeeze(1)
    assert len(recovered) == len(batchnorm_layers(teacher)) == 2
    assert (recovered < noise).all(), (recovered, noise)
    assert selection.provenance["settings"]["jitter"] == 1 and not selection.provenance["settings"]["flip"]


def test_a_teacher_without_batchnorm_is_refused_before_and_during_selection(bn_ctx, digits_teacher):
    sentence = "SRe2L recovers images from a BatchNorm teacher's running statistics, but the teacher 'convnet' has no"
    cfg = TrialConfig.from_dict({"selector": "sre2l", "ipc": 2, "teacher": dict(TEST_TEACHER)})
    with pytest.raises(StudyError, match=sentence):
        validate_trial(cfg)
    validate_trial(TrialConfig.from_dict({"selector": "sre2l", "ipc": 2, "teacher": dict(TEST_BN_TEACHER)}))
    plain = SelectionContext(bn_ctx.data, bn_ctx.cache, "cpu", teacher_factory=lambda: digits_teacher)
    with pytest.raises(StudyError, match=sentence):
        build_selector("sre2l", iterations=1).select(plain, 1, seed=0)
    with pytest.raises(StudyError, match="parameters are"):
        build_selector("sre2l", steps=3)


def test_the_release_loss_is_kl_batchmean_at_t_without_t_squared(digits, digits_teacher):
    protocol = Protocol(regime="sl_kd", **{k: PRESETS["cifar10"][k] for k in ("temperature", "t2_scale")})
    assert protocol.temperature == 20 and PRESETS["cifar10"]["cutmix_prob"] == 1.0
    views = digits.train_x[:16].float() / 255
    student = torch.randn(16, 10)
    got = build_regime(protocol, teacher=digits_teacher.model).loss(student, views, digits.train_y[:16], None, None)
    with torch.no_grad():
        target = F.softmax(digits_teacher.model(views) / 20, dim=1)
    by_hand = (target * (target.log() - F.log_softmax(student / 20, dim=1))).sum() / 16
    assert got.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("stacked", [False, True])
def test_the_release_recipe_spares_1d_parameters_and_ends_at_half_lr(digits, stacked):
    model = model_for(digits, "convnet_bn", width=8)
    named = list(model.named_parameters())
    if stacked:  # a vmapped seed stack: every parameter gains a leading dimension
        named = [(n, torch.nn.Parameter(p.detach().expand(2, *p.shape).clone())) for n, p in named]
    opt, schedule = get_recipe("release-v1").build(named, steps=20, lead_dims=int(stacked))
    assert isinstance(opt, torch.optim.AdamW)
    decayed, spared = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
    own_dims = lambda p: p.dim() - int(stacked)  # noqa: E731
    assert {own_dims(p) for p in decayed["params"]} == {2, 4} and {own_dims(p) for p in spared["params"]} == {1}
    assert len(decayed["params"]) == 3 and len(spared["params"]) == len(named) - 3  # 2 conv kernels + linear
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_batch_size_follows_the_ipc_as_in_the_release():
    table = PRESETS["cifar10"]["batch_size"]
    assert [batch_size_for(table, ipc) for ipc in (1, 5, 10, 20, 50, 100, 0)] == [10, 10, 50, 50, 100, 100, 256]
    assert batch_size_for(25, 10) == 25
    spec = resolve_spec("quick", "cifar10", selectors="random", ipc=[1, 10, 50], regimes="sl_kd", budgets=[600])
    got = {c.ipc: (c.protocol.batch_size, c.protocol.model, c.protocol.recipe) for c in spec.cells()}
    assert got == {1: (10, "convnet_bn", "release-v1"), 10: (50, "convnet_bn", "release-v1"),
                   50: (100, "convnet_bn", "release-v1"), 0: (256, "convnet_bn", "release-v1")}
    assert PRESETS["cifar10"]["teacher"]["model"] == "convnet_bn"


def test_batchnorm_students_train_batched_as_one_by_one(digits, digits_teacher):
    g = torch.Generator().manual_seed(0)
    sets = [(digits.train_x[i], digits.train_y[i]) for i in (torch.randperm(len(digits.train_y), generator=g)[:40]
                                                            for _ in range(2))]
    protocol = Protocol(model="convnet_bn", steps=60, batch_size=16, model_kwargs={"width": 8}, regime="hl",
                        recipe="release-v1")
    kw = dict(teacher=digits_teacher.model, device="cpu", eval_points=2)
    alone = [train_student(x, y, digits, protocol, seed=s, **kw) for (x, y), s in zip(sets, (1, 2))]
    together = train_students(sets, [1, 2], digits, protocol, **kw)
    for a, b in zip(alone, together):
        assert b.loss_curve == pytest.approx(a.loss_curve, rel=1e-3, abs=1e-4)
        assert b.test_acc == pytest.approx(a.test_acc, abs=2 / len(digits.test_y))
    assert min(r.test_acc for r in alone) > 0.15  # above chance: evaluated with the running statistics


def test_all_selectors_take_sre2l_only_with_a_batchnorm_teacher():
    from study.selection import SELECTORS

    plain = resolve_spec("quick", "digits", all_selectors=SELECTORS.names())
    bn = resolve_spec("quick", "digits", overrides=["teacher.model=convnet_bn"], all_selectors=SELECTORS.names())
    assert "sre2l" not in plain.selectors and "sre2l" in bn.selectors
    assert set(bn.selectors) - set(plain.selectors) == {"sre2l"}
