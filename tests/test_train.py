"""Budgeted student training: exact step budgets, determinism, and the paper's basic effects on real digits."""
from __future__ import annotations

import statistics

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from study.core.cache import Cache
from study.runs.config import TrialConfig
from study.core.protocol import Protocol
from study.core.recipes import get_recipe
from study.selection import SelectionContext, build_selector
from study.core.teacher import TeacherSpec, get_teacher
from study.core.train import batch_indices, train_student
from study.runs.trial import run_trial

from conftest import TEST_TEACHER



@pytest.fixture(scope="module")
def teacher(one_thread, digits, cache_dir):
    """conftest's digits teacher (same spec, same cache entry), built after one_thread is in force."""
    return get_teacher(digits, TeacherSpec(**TEST_TEACHER), Cache(cache_dir), device="cpu")


class StepCounter:
    """Counts real optimizer.step() calls through torch's global optimizer hook."""

    def __enter__(self):
        self.optimizers: list[int] = []
        self.handle = register_optimizer_step_post_hook(
            lambda opt, args, kwargs: self.optimizers.append(id(opt)))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def steps(self) -> int:
        return len(self.optimizers)


def random_subset(data, ipc, seed, tmp_path):
    ctx = SelectionContext(data, Cache(tmp_path), "cpu")
    return build_selector("random").select(ctx, ipc, seed)


@pytest.mark.parametrize("ipc", [1, 50])
@pytest.mark.parametrize("regime", ["hl", "sl_kd"])
def test_budget_is_exactly_s_steps_whatever_the_subset_size(digits, teacher, tmp_path, ipc, regime):
    S, B = 23, 64
    subset = random_subset(digits, ipc, seed=0, tmp_path=tmp_path)
    assert len(subset) == 10 * ipc
    with StepCounter() as counter:
        result = train_student(subset.images, subset.labels, digits,
                               Protocol(steps=S, batch_size=B, regime=regime, model_kwargs={"width": 16}),
                               teacher=teacher.model, eval_points=3, device="cpu")
    assert counter.steps == S and len(set(counter.optimizers)) == 1  # the teacher never steps
    assert result.steps == S and result.batch_size == B and len(result.loss_curve) == S
    assert result.samples_seen == S * B
    assert result.epochs_equivalent == pytest.approx(S * B / len(digits.train_y))
    assert result.train_size == 10 * ipc
    assert [s for s, _ in result.val_curve] == [7, 14, 21, 23]
    assert result.flops > 0 and result.wall_seconds > 0


def test_flops_count_the_teacher_only_under_kd(digits, teacher):
    x, y = digits.train_x[:100], digits.train_y[:100]
    small = Protocol(steps=1, batch_size=32, model_kwargs={"width": 16})

    def flops(protocol: Protocol) -> float:
        return train_student(x, y, digits, protocol, teacher=teacher.model, device="cpu").flops

    hl, sl, kd = (flops(small.replace(regime=regime)) for regime in ("hl", "sl", "sl_kd"))
    assert hl == sl > 0 and kd > hl
    # Student forward + backward is about 3x its forward; the teacher's forward is added under KD.
    big = flops(small.replace(model_kwargs={"width": 32}))
    assert 2.5 < big / hl < 4.5  # conv FLOPs grow about with width^2 (first conv and head only linearly)


@pytest.mark.parametrize("n, batch", [(10, 64), (500, 64), (64, 64)])
def test_batches_are_back_to_back_permutations(n, batch):
    g = torch.Generator().manual_seed(0)
    stream = batch_indices(n, batch, g)
    batches = [next(stream) for _ in range(30)]
    assert all(len(b) == batch for b in batches)
    flat = torch.cat(batches)
    full_passes = len(flat) // n
    for p in range(full_passes):  # every pass over the subset is a fresh permutation
        assert sorted(flat[p * n:(p + 1) * n].tolist()) == list(range(n))
    counts = torch.bincount(flat, minlength=n)
    assert counts.max() - counts.min() <= 1
    assert not torch.equal(flat[:n], flat[n:2 * n]) or n == 1  # reshuffled, not replayed


def test_recipes_are_explicit_and_cosine_ends_at_zero():
    for name, opt_cls, lr in [("sgd-v1", torch.optim.SGD, 0.01), ("adamw-v1", torch.optim.AdamW, 1e-3)]:
        params = [("weight", torch.nn.Parameter(torch.zeros(3)))]
        opt, schedule = get_recipe(name).build(params, steps=10)
        assert isinstance(opt, opt_cls) and opt.param_groups[0]["lr"] == pytest.approx(lr)
        lrs = []
        for _ in range(10):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            schedule.step()
        assert lrs[0] == pytest.approx(lr) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * lr
        assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert get_recipe("sgd-v1", lr=0.1).lr == 0.1 and get_recipe("sgd-v1").lr == 0.01


def test_the_papers_hl_recipe_drops_lr_tenfold_after_epoch_151_of_300():
    """sgd-step-v1 under a 300-epoch budget of 4 steps an epoch steps like the reproduction's per-epoch
    MultiStepLR(milestones=[151], gamma=0.1): 151 epochs at 0.01, 149 at 0.001."""
    params = [("weight", torch.nn.Parameter(torch.zeros(3)))]
    opt, schedule = get_recipe("sgd-step-v1").build(params, steps=300 * 4)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 5e-4
    lrs = []
    for _ in range(300 * 4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[:151 * 4] == [pytest.approx(0.01)] * (151 * 4)
    assert lrs[151 * 4:] == [pytest.approx(0.001)] * (149 * 4)


@pytest.mark.parametrize("name, reference", [
    ("sgd-step-v1", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=False)),
    ("sgd-v1", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=False)),
    ("adamw-v1", lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01, foreach=False))])
def test_fused_recipe_steps_like_the_plain_optimiser(name, reference):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=g), torch.randn(3, generator=g)]
    fused = [torch.nn.Parameter(t.clone()) for t in start]
    plain = [torch.nn.Parameter(t.clone()) for t in start]
    opt, _ = get_recipe(name).build([(f"p{i}", p) for i, p in enumerate(fused)], steps=10)
    ref = reference(plain)
    assert opt.defaults["fused"]
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=g) for t in start]
        for params, o in ((fused, opt), (plain, ref)):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            o.step()
    for a, b, s in zip(fused, plain, start):
        assert not torch.equal(a, s)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def small_trial(**kw) -> TrialConfig:
    base = dict(ipc=5, steps=40, seeds=2, model_kwargs={"width": 16}, teacher=dict(TEST_TEACHER))
    return TrialConfig.from_dict({**base, **kw})


@pytest.mark.parametrize("regime, cutmix", [("hl", 0.0), ("sl_kd", 0.5)])
def test_same_config_and_seed_give_identical_results(cache_dir, regime, cutmix):
    cfg = small_trial(regime=regime, cutmix_prob=cutmix)
    a, b = run_trial(cfg, cache_dir, "cpu"), run_trial(cfg, cache_dir, "cpu")
    assert a.accuracies == b.accuracies
    for sa, sb in zip(a.per_seed, b.per_seed):
        assert sa["loss_curve"] == sb["loss_curve"] and sa["val_curve"] == sb["val_curve"]
    # Repeats differ: another subset and another initialisation.
    assert not torch.equal(a.selections[0].indices, a.selections[1].indices)
    assert a.per_seed[0]["loss_curve"] != a.per_seed[1]["loss_curve"]
    for sa, sb in zip(a.selections, b.selections):
        assert torch.equal(sa.indices, sb.indices)


def test_different_selection_seeds_give_different_random_subsets(digits, tmp_path):
    cfg = TrialConfig(ipc=5)
    seeds = [cfg.selection_seed(r) for r in range(5)]
    assert len(set(seeds)) == 5
    subsets = [set(random_subset(digits, 5, s, tmp_path).indices.tolist()) for s in seeds]
    assert all(len(s) == 50 for s in subsets)
    assert all(subsets[i] != subsets[j] for i in range(5) for j in range(i + 1, 5))
    overlap = statistics.fmean(len(subsets[i] & subsets[j]) for i in range(5) for j in range(i + 1, 5))
    assert overlap < 10  # about 50 * 5/130 ~ 2 shared images expected for independent draws
    assert set(random_subset(digits, 5, seeds[0], tmp_path).indices.tolist()) == subsets[0]
    # Paired across cells: the subset depends on (dataset, selector, IPC, repeat), not on the regime or budget.
    assert TrialConfig.from_dict(dict(ipc=5, regime="sl_kd", steps=77)).selection_seed(0) == seeds[0]
    assert TrialConfig(ipc=6).selection_seed(0) != seeds[0]


# ---- the paper's basic effect and the protocol check --------------------------------------------------------------

def test_kd_beats_hard_labels_on_random_ipc5_small_budget(cache_dir):
    """A cheap version of the effect below: width-32 students, 300 steps, the suite's shared teacher, T=4.
    Measured here: HL 90.3% vs SL+KD 92.2% (3 seeds; KD ahead on every paired seed by 1.7-2.0 points)."""
    hl = run_trial(small_trial(regime="hl", steps=300, seeds=3, model_kwargs={"width": 32}), cache_dir, "cpu")
    kd = run_trial(small_trial(regime="sl_kd", steps=300, seeds=3, model_kwargs={"width": 32}), cache_dir, "cpu")
    assert [s["selection_seed"] for s in hl.per_seed] == [s["selection_seed"] for s in kd.per_seed]  # paired
    assert statistics.fmean(kd.accuracies) > statistics.fmean(hl.accuracies) + 0.005, (kd.accuracies, hl.accuracies)


# Long versions at TrialConfig's defaults (convnet width 64, 1000 steps at batch 64, adamw-v1, T=4, the width-64
# 50-epoch teacher): marked slow; measured numbers are in benchmarks/README.md.

PAPER_BUDGET = dict(steps=1000, seeds=3)


@pytest.mark.slow
def test_kd_beats_hard_labels_on_random_ipc5(cache_dir):
    hl = run_trial(TrialConfig.from_dict(dict(ipc=5, regime="hl", **PAPER_BUDGET)), cache_dir, "cpu")
    kd = run_trial(TrialConfig.from_dict(dict(ipc=5, regime="sl_kd", **PAPER_BUDGET)), cache_dir, "cpu")
    assert statistics.fmean(kd.accuracies) > statistics.fmean(hl.accuracies) + 0.01, (kd.accuracies, hl.accuracies)


@pytest.fixture(scope="module")
def full_data_hl(cache_dir):
    return run_trial(TrialConfig.from_dict(dict(selector="full", regime="hl")), cache_dir, "cpu")


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["sl", "sl_kd"])
def test_no_regime_under_trains_on_full_data_at_the_default_budget(cache_dir, full_data_hl, regime):
    soft = run_trial(TrialConfig.from_dict(dict(selector="full", regime=regime)), cache_dir, "cpu")
    gap = statistics.fmean(full_data_hl.accuracies) - statistics.fmean(soft.accuracies)
    assert gap <= 0.02, (regime, full_data_hl.accuracies, soft.accuracies)


@pytest.mark.parametrize("regime", ["hl", "sl", "sl_kd"])
def test_a_stitched_set_trains_under_its_own_views_in_every_regime(cache_dir, teacher, monkeypatch, regime):
    """RDED at f=2 on digits (teacher trained beforehand): every training batch of every regime is drawn with the
    set's stitched views, never the dataset's."""
    import study.core.train as train_module
    from study.core.augment import stitched_views

    specs, real = [], train_module.augment_batch

    def spy(x, spec, g):
        specs.append(spec)
        return real(x, spec, g)

    monkeypatch.setattr(train_module, "augment_batch", spy)
    cfg = small_trial(selector="rded", selector_params={"factor": 2, "m": 30, "k": 2}, regime=regime, steps=12)
    out = run_trial(cfg, cache_dir, "cpu")
    assert all(s.views == stitched_views(2, flip=False) for s in out.selections)
    assert specs and set(specs) == {stitched_views(2, flip=False)}
    assert len(specs) == 12 * cfg.seeds
    assert all(0 <= a <= 1 for a in out.accuracies)
