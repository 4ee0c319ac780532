"""A study's driver lists an ImageFolder tree once; its Ray workers read that listing instead of the tree."""
from __future__ import annotations

import numpy as np
import ray
from PIL import Image
from sklearn.datasets import load_digits

import study.core.data
from study.core.data import listed_folders, load_dataset
from study.core.environment import study_environment
from study.core.listing import ENV, PUBLISHED, published_listings

PER_CLASS = 6


def digits_tree(root):
    digits = load_digits()
    for c in range(10):
        (root / f"digit{c}").mkdir(parents=True)
        for i in np.flatnonzero(digits.target == c)[:PER_CLASS]:
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(root / f"digit{c}" / f"{i:04d}.png")
    return digits


def size(data) -> int:
    return len(data.train_y) + len(data.val_y) + len(data.test_y)


def test_workers_of_a_study_read_the_drivers_listing_not_the_tree(tmp_path, tmp_path_factory, monkeypatch):
    """An image added after the driver published its listing is seen by nobody in the study (the workers
    would see it if they listed the tree themselves), and by the next load once the study is over."""
    monkeypatch.setattr(study.core.data, "IMAGEFOLDER_SIZE", 8)

    @ray.remote(num_cpus=1)
    def images_seen(name: str) -> int:
        data = load_dataset(name)
        return len(data.train_y) + len(data.val_y) + len(data.test_y)

    digits = digits_tree(tmp_path / "tree")
    name = f"imagefolder:{tmp_path / 'tree'}"
    with published_listings(listed_folders(name)):
        assert set(PUBLISHED) == {str(tmp_path / "tree")} and ENV in study_environment()
        Image.fromarray((digits.images[-1] * 255 / 16).astype(np.uint8)).save(tmp_path / "tree" / "digit0" / "late.png")
        ray.init(num_cpus=1, log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
                 runtime_env={"env_vars": study_environment()})
        try:
            assert ray.get(images_seen.remote(name), timeout=300) == 10 * PER_CLASS
        finally:
            ray.shutdown()
        assert size(load_dataset(name)) == 10 * PER_CLASS
    assert not PUBLISHED and ENV not in study_environment()
    assert size(load_dataset(name)) == 10 * PER_CLASS + 1
