"""Declarative presets (how to train on a dataset) and spaces (which cells to run)."""
from search_spaces.presets import DEFAULT_CELL, DEFAULT_PRESET, PRESETS
from search_spaces.spaces import SPACES

__all__ = ["DEFAULT_CELL", "DEFAULT_PRESET", "PRESETS", "SPACES"]
