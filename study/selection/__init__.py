"""Selector registry. Importing this package registers every selector."""
from study.selection import random  # noqa: F401
from study.selection import geometry, score_based  # noqa: F401
from study.selection import rded  # noqa: F401
from study.selection import cad  # noqa: F401
from study.selection import ca2d  # noqa: F401
from study.selection import facility  # noqa: F401
from study.selection import difficulty_window  # noqa: F401
from study.selection import dm  # noqa: F401
from study.selection import sre2l  # noqa: F401
from study.selection import external  # noqa: F401
from study.selection.base import (  # noqa: F401
    SELECTORS, Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector,
)


def build_selector(name: str, **params) -> Selector:
    """Build a registered selector; ``kind:ARG`` names pass ARG as the ``arg`` parameter."""
    cls, named = SELECTORS.resolve(name)
    return cls(**named, **params)
