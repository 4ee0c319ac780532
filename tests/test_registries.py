"""Every entry of every registry, built and run once: models (forward, backward, one optimiser step), recipes and
label regimes (one training step), selectors (one selection on digits, the contract every selector keeps).

``ENTRIES`` lists what each test runs; the first test checks that it is exactly what the registries hold, so an
entry registered without a case here fails the suite, and prints the count of each axis (``pytest -s``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from study.core.errors import StudyError
from study.core.models import MODELS, model_for
from study.core.protocol import Protocol
from study.core.recipes import RECIPES, get_recipe
from study.core.regimes import REGIMES
from study.core.train import train_student
from study.selection import SELECTORS, SelectionContext, build_selector
from test_scores import TINY_PROXY, digits_ctx  # noqa: F401 (digits_ctx is a fixture)

# A registered kind that takes an argument stands for every name of its pattern through one named example:
# ``timm:resnet10t`` for any timm model (built without pretrained weights, nothing is downloaded), an exported
# digits set for ``external:PATH``.
TIMM_EXAMPLE = "timm:resnet10t"
MODEL_CASES = [TIMM_EXAMPLE if name == "timm" else name for name in MODELS.names()]

# Small iteration counts through the selectors' own parameters, so one selection takes a second or two.
CHEAP = {"el2n": TINY_PROXY, "grand": TINY_PROXY, "dm": {"iterations": 3, "width": 16, "batch_real": 16},
         "sre2l": {"iterations": 3}, "rded": {"m": 20}, "cad_prune": {"scoring_batch": 64},
         "rcad": {"scoring_batch": 64}, "ca2d": {"scoring_batch": 64, "mipc": 20, "k": 3}}
# Selectors with no random step at their defaults (a greedy rule, an end of the difficulty range, a fixed set).
DETERMINISTIC = {"full", "external", "herding", "kcenter", "d2", "forgetting", "el2n", "grand", "aum", "entropy",
                 "margin", "least_confidence", "dyn_unc", "moderate", "cad_prune", "rcad", "facility_location"}

ENTRIES = {"models": (MODELS, MODEL_CASES), "recipes": (RECIPES, RECIPES.names()),
           "regimes": (REGIMES, REGIMES.names()), "selectors": (SELECTORS, SELECTORS.names())}


def test_every_registered_entry_has_a_case():
    for axis, (registry, cases) in ENTRIES.items():
        assert sorted(c.partition(":")[0] for c in cases) == sorted(registry.names()), axis
        print(f"{axis}: {len(cases)} entries: {', '.join(cases)}")
    assert sum(len(cases) for _, cases in ENTRIES.values()) >= 30  # here: 4 models, 3 recipes, 3 regimes, 22 selectors


@pytest.mark.parametrize("name", MODEL_CASES)
def test_every_model_trains_one_step(name, digits):
    torch.manual_seed(0)
    model = model_for(digits, name)
    x = digits.train_x[:16].float() / 255
    y = digits.train_y[:16]
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (16, digits.num_classes) and torch.isfinite(logits).all()
    loss = F.cross_entropy(logits, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_timm_name_that_is_not_a_model_is_one_sentence(digits):
    with pytest.raises(StudyError, match="timm:nope is not a timm model name"):
        model_for(digits, "timm:nope")


@pytest.mark.parametrize("name", RECIPES.names())
def test_every_recipe_takes_one_step(name, digits):
    torch.manual_seed(0)
    model = model_for(digits, "convnet", width=8)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer, schedule = get_recipe(name).build(model.named_parameters(), steps=1)
    F.cross_entropy(model(digits.train_x[:16].float() / 255), digits.train_y[:16]).backward()
    optimizer.step()
    schedule.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    result = train_student(digits.train_x[:20], digits.train_y[:20], digits,
                           Protocol(recipe=name, steps=1, batch_size=8, model_kwargs={"width": 8}), seed=0,
                           device="cpu", eval_points=1)
    assert result.steps == 1 and all(map(torch.isfinite, torch.tensor(result.loss_curve)))


@pytest.mark.parametrize("name", REGIMES.names())
def test_every_regime_trains_one_step(name, digits, digits_teacher):
    teacher = digits_teacher.model if REGIMES.get(name).needs_teacher else None
    result = train_student(digits.train_x[:20], digits.train_y[:20], digits,
                           Protocol(regime=name, steps=1, batch_size=8, model_kwargs={"width": 8}), teacher=teacher,
                           seed=0, device="cpu", eval_points=1)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.loss_curve)).all()


@pytest.fixture(scope="module")
def exported_set(digits_ctx, tmp_path_factory):
    """A digits set written as study.export writes it, for ``external:PATH``."""
    from study.export import write_set

    chosen = build_selector("random").select(digits_ctx, 3, seed=7)
    out = tmp_path_factory.mktemp("external") / "set.pt"
    write_set(chosen.images, chosen.labels, digits_ctx.data.classes, out)
    return out


def selector_case(name: str, exported_set) -> str:
    return f"external:{exported_set}" if name == "external" else name


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_keeps_the_contract(name, digits_ctx, exported_set, request):
    ctx = digits_ctx
    cls = SELECTORS.get(name)
    assert cls.family in ("coreset", "dd") and isinstance(cls.needs_teacher, bool)
    if cls.needs_batchnorm_teacher:
        bn_teacher = request.getfixturevalue("digits_bn_teacher")
        ctx = SelectionContext(ctx.data, ctx.cache, ctx.device, ctx.protocol, lambda: bn_teacher)
    selector = build_selector(selector_case(name, exported_set), **CHEAP.get(name, {}))
    assert build_selector(name, **selector.params).params == selector.params  # the resolved params rebuild it
    ipc, n = 3, len(ctx.data.train_y)
    first = selector.select(ctx, ipc, seed=0)
    per_class = torch.bincount(first.labels, minlength=ctx.data.num_classes).tolist()
    assert per_class == (ctx.data.class_counts().tolist() if name == "full" else [ipc] * ctx.data.num_classes)
    assert first.images.dtype == torch.uint8 and len(first.images) == len(first.labels)
    if not first.is_synthetic:
        idx = first.indices.tolist()
        assert len(set(idx)) == len(idx) and 0 <= min(idx) and max(idx) < n
        assert torch.equal(ctx.data.train_y[first.indices], first.labels)
    assert first.provenance["selector"] == name and first.provenance["seed"] == 0
    assert first.provenance["params"] == selector.params

    again = selector.select(ctx, ipc, seed=0)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    if name not in DETERMINISTIC:
        assert not torch.equal(selector.select(ctx, ipc, seed=1).images, first.images)

    if name not in ("full", "external"):
        smallest = int(ctx.data.class_counts().min())
        with pytest.raises(StudyError, match="IPC"):
            selector.select(ctx, smallest + 1, seed=0)


def test_an_unknown_parameter_is_one_sentence_for_every_selector(exported_set):
    for name in SELECTORS.names():
        with pytest.raises(StudyError, match=rf"^The selector '{name}' has no parameter\(s\) \['bogus'\]; its "
                                             r"parameters are: .*\.$"):
            build_selector(selector_case(name, exported_set), bogus=1)

