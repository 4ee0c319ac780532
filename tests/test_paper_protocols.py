"""The paper's protocols as presets: budgets in epochs over the subset, regime-specific settings, the
TinyImageNet loader on its released layout. Pure spec resolution (no training) but for the loader."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search_spaces import PRESETS
from study.core.data import load_dataset
from study.core.errors import StudyError
from study.core.protocol import steps_for
from study.run import config_from_args, parse
from study.runs.spec import resolve_spec


@pytest.mark.parametrize("ipc, classes, batch, expect", [
    (10, 10, 256, (300, 100, 300)),    # Fashion-MNIST IPC 10: the whole subset is one batch, one step an epoch
    (50, 10, 256, (600, 256, 300)),    # 500 images: two steps an epoch (256 + 256, the second wraps around)
    (10, 100, 256, (1200, 256, 300)),  # CIFAR-100 IPC 10: ceil(1000 / 256) = 4 steps an epoch
    (50, 100, 256, (6000, 256, 300)),
])
def test_epoch_budgets_derive_steps_and_a_batch_that_fits_the_subset(ipc, classes, batch, expect):
    assert steps_for(300, "epochs", ipc, classes, batch) == expect
    assert steps_for(300, "steps", ipc, classes, batch) == (300, batch, None)


@pytest.fixture
def paper_spec(fashion_mnist_root):
    """The paper grid on the generated Fashion-MNIST: epoch budgets need only its class count."""
    return lambda **kw: resolve_spec("paper", preset="fashion-mnist-paper", selectors="random", ipc="10,50",
                                     regimes="hl,sl,sl_kd", data_root=fashion_mnist_root, **kw)


def test_one_study_runs_hl_and_sl_under_their_own_recipes_in_epochs(paper_spec):
    spec = paper_spec()
    cells = {(c.selector, c.ipc, c.protocol.regime, c.protocol.steps): c.protocol for c in spec.cells()}
    hl, sl = cells[("random", 10, "hl", 300)], cells[("random", 50, "sl", 600)]
    assert (hl.recipe, hl.augment, hl.batch_size, hl.epochs) == ("sgd-step-v1", "dsa", 100, 300)
    assert (sl.recipe, sl.temperature, sl.t2_scale, sl.batch_size, sl.epochs) == ("adamw-v1", 20.0, True, 256, 300)
    kd = cells[("random", 10, "sl_kd", 600)]  # RDED's evaluation: batch 50 at IPC 10, 2 steps an epoch
    assert (kd.model, kd.recipe, kd.cutmix_prob, kd.t2_scale, kd.batch_size) == ("convnet_bn", "release-v1", 1.0,
                                                                                  False, 50)


def test_the_full_data_reference_matches_each_ipcs_images_seen(paper_spec):
    full = [c.protocol for c in paper_spec().reference_cells() if c.selector == "full" and c.protocol.regime == "hl"]
    assert sorted((p.steps, p.batch_size, p.epochs) for p in full) == [(300, 100, 300), (600, 256, 300)]


def test_an_explicit_setting_holds_in_every_regime(paper_spec):
    spec = paper_spec(overrides=["recipe=sgd-v1"])
    assert {c.protocol.recipe for c in spec.cells() if c.protocol.regime in ("hl", "sl")} == {"sgd-v1"}
    assert spec.per_regime["sl"] == {}


def test_a_single_trial_takes_its_regimes_settings_and_epoch_budget(fashion_mnist_root):
    cfg = config_from_args(parse(["--preset", "fashion-mnist-paper", "--regime", "sl", "--ipc", "50",
                                  "--data-root", fashion_mnist_root]))
    p = cfg.protocol
    assert (p.recipe, p.steps, p.batch_size, p.epochs, p.augment) == ("adamw-v1", 600, 256, 300, "dsa")
    assert cfg.dataset == "fashion-mnist"  # the preset's own dataset, not study.run's default
    pinned = config_from_args(parse(["--preset", "fashion-mnist-paper", "--regime", "sl", "--recipe", "sgd-v1",
                                     "--steps", "40", "--data-root", fashion_mnist_root]))
    assert (pinned.protocol.recipe, pinned.protocol.steps, pinned.protocol.epochs) == ("sgd-v1", 40, None)


def test_paper_presets_use_convnet_d3_and_d4(fashion_mnist_root):
    assert PRESETS["cifar100-paper"]["model_kwargs"] == {"width": 128, "depth": 3}
    assert PRESETS["tinyimagenet-paper"]["model_kwargs"] == {"width": 128, "depth": 4}
    spec = resolve_spec("paper", preset="tinyimagenet-paper", dataset="fashion-mnist", selectors="random",
                        ipc="10", regimes="hl", data_root=fashion_mnist_root)
    assert spec.classes == 10 and spec.cells()[0].protocol.model_kwargs["depth"] == 4


def test_a_regime_setting_a_preset_cannot_vary_is_one_sentence(monkeypatch):
    monkeypatch.setitem(PRESETS, "bad", {**PRESETS["fashion-mnist-paper"], "per_regime": {"sl": {"steps": 5}}})
    with pytest.raises(StudyError, match="per_regime.sl sets steps, which a regime cannot vary"):
        resolve_spec("paper", preset="bad", selectors="random", ipc="10", regimes="sl")


def write_tiny_imagenet(root, wnids=("n01", "n02", "n03"), train_per_class=12, val_per_class=4):
    """A small tree in TinyImageNet's released layout; pixel values encode the class."""
    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for c, w in enumerate(wnids):
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True)
        for i in range(train_per_class):
            Image.fromarray(np.full((64, 64, 3), 40 * c + i, np.uint8)).save(folder / f"{w}_{i}.JPEG", quality=100)
        for i in range(val_per_class):
            name = f"val_{c}_{i}.JPEG"
            mode = "L" if i == 0 else "RGB"  # the release holds some greyscale JPEGs
            Image.fromarray(np.full((64, 64, 3), 40 * c, np.uint8)).convert(mode).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet_loads_its_released_layout(tmp_path):
    write_tiny_imagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.classes == ["n01", "n02", "n03"] and data.image_shape == (3, 64, 64)
    assert len(data.train_y) + len(data.val_y) == 36 and len(data.test_y) == 12
    assert data.test_y.bincount().tolist() == [4, 4, 4]
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        level = x.float().mean(dim=(1, 2, 3))
        assert ((level - 40 * y).abs() < 13).all()  # every image under its own class's label
    assert data.augment.flip and data.augment.crop_padding == 8
    assert load_dataset("tinyimagenet", tmp_path / "tiny-imagenet-200").test_y.tolist() == data.test_y.tolist()


def test_a_missing_tiny_imagenet_says_where_to_get_it(tmp_path):
    with pytest.raises(StudyError, match="TinyImageNet was not found under .*tiny-imagenet-200.zip"):
        load_dataset("tinyimagenet", tmp_path)


def test_new_settings_at_their_defaults_keep_earlier_trials_hashes():
    from study.runs.config import TrialConfig

    plain = TrialConfig.from_dict({"selector": "herding", "ipc": 5, "steps": 40})
    assert "augment" not in plain.identity() and "epochs" not in plain.identity()
    assert plain.to_dict()["augment"] == "dataset"  # the record still says it
    assert TrialConfig.from_dict({"selector": "herding", "ipc": 5, "steps": 40, "augment": "dsa"}).hash != plain.hash
    assert TrialConfig.from_dict({"selector": "herding", "ipc": 5, "steps": 40, "epochs": 300}).hash != plain.hash
