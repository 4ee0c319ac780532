"""What a selection leaves behind for a person to inspect: its indices, its provenance, a picture.

The scaling command logs these files to the trial's MLflow run, so a reader
can see which images a selector kept without rerunning it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import save_image

from study.core.data import Dataset
from study.selection.base import Selection


def class_grid(selection: Selection, num_classes: int, per_class: int) -> torch.Tensor:
    """The first ``per_class`` images of each class, one row per class, blanks where a class has fewer."""
    rows = []
    for c in range(num_classes):
        images = selection.images[selection.labels == c][:per_class]
        blank = torch.zeros((per_class - len(images), *selection.images.shape[1:]), dtype=images.dtype)
        rows.append(torch.cat([images, blank]))
    return torch.cat(rows).float().div(255)


def save_selection_artifacts(selection: Selection, data: Dataset, folder, per_class: int = 8) -> list[Path]:
    """Write ``indices.npy`` (coresets) or ``labels.npy`` (synthetic sets), ``provenance.json`` and ``grid.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if selection.is_synthetic:
        ids = folder / "labels.npy"
        np.save(ids, selection.labels.numpy())
    else:
        ids = folder / "indices.npy"
        np.save(ids, selection.indices.numpy())
    provenance = folder / "provenance.json"
    provenance.write_text(json.dumps(selection.provenance, indent=1, default=str))
    grid = folder / "grid.png"
    save_image(class_grid(selection, data.num_classes, per_class), grid, nrow=per_class, padding=1)
    return [ids, provenance, grid]
