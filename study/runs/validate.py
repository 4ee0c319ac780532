"""Checks that run before any compute: every mistake a user can make is one sentence, up front."""
from __future__ import annotations

from pathlib import Path

from study.runs.config import TrialConfig
from study.core.errors import StudyError
from study.core.models import MODELS, has_batchnorm
from study.core.precision import check_precision
from study.core.protocol import AUGMENTS, TeacherSpec
from study.core.recipes import RECIPES
from study.core.regimes import REGIMES
from study.selection import SELECTORS
from study.selection.sre2l import no_batchnorm_sentence


def teacher_fits(selector: type, teacher: TeacherSpec) -> bool:
    """Whether a selector can work with the study's teacher: SRe2L needs BatchNorm statistics to recover from."""
    return not selector.needs_batchnorm_teacher or has_batchnorm(teacher.model, teacher.model_kwargs)


def validate_trial(cfg: TrialConfig, class_sizes: dict[str, int] | None = None) -> None:
    """Raise StudyError for the first problem in ``cfg``; ``class_sizes`` maps dataset -> smallest class."""
    selector, _ = SELECTORS.resolve(cfg.selector)
    protocol = cfg.protocol
    REGIMES.get(protocol.regime)
    MODELS.resolve(protocol.model)
    MODELS.resolve(cfg.teacher.model)
    if not teacher_fits(selector, cfg.teacher):
        raise StudyError(no_batchnorm_sentence(cfg.teacher.model))
    RECIPES.get(protocol.recipe)
    from study.core.data import DATASETS

    DATASETS.resolve(cfg.dataset)
    if protocol.steps < 1:
        raise StudyError(f"The budget must be a positive number of steps, not {protocol.steps}.")
    if protocol.batch_size < 1:
        raise StudyError(f"The batch size must be positive, not {protocol.batch_size}.")
    if cfg.seeds < 1:
        raise StudyError(f"A trial needs at least one seed, not {cfg.seeds}.")
    check_precision(protocol.precision)
    if protocol.augment not in AUGMENTS:
        raise StudyError(f"augment must be 'dataset' (the dataset's own views) or 'dsa' (DSA as released), "
                         f"not {protocol.augment!r}.")
    if protocol.temperature <= 0:
        raise StudyError(f"The soft-label temperature must be positive, not {protocol.temperature}.")
    if not cfg.is_full_data:
        smallest = (class_sizes or {}).get(cfg.dataset)
        if cfg.ipc < 1 or (smallest is not None and cfg.ipc > smallest):
            limit = f" and at most {smallest}, the smallest class of {cfg.dataset}" if smallest else ""
            raise StudyError(f"IPC must be at least 1{limit}; got {cfg.ipc}.")
    check_teacher_file(cfg.teacher.path)


def check_teacher_file(path: str | None) -> None:
    """A teacher checkpoint the user names must be a readable state dict; whether it fits the model is checked
    when it is loaded (that needs the dataset's classes and image size)."""
    if not path:
        return
    import pickle

    import torch

    file = Path(path).expanduser()
    if not file.is_file():
        raise StudyError(f"The teacher checkpoint {file} does not exist; pass the file of trained teacher weights "
                         "with --set teacher.path=FILE (see docs/imagenet.md).")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError):
        state = None
    if not isinstance(state, dict):
        raise StudyError(f"The teacher checkpoint {file} is not a state dict; save it with "
                         "torch.save(model.state_dict(), FILE).")
