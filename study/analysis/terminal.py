"""One console for everything the study prints.

On a terminal rich fits output to the window. Written to a file or a pipe (a
study run with nohup, CI's log) rich assumes 80 columns: wide tables lose
their cells to "…" and every headline sentence is broken over lines that
grep cannot find. There the console is LOG_WIDTH wide instead, unless the
user set COLUMNS.
"""
from __future__ import annotations

import os

from rich.console import Console

LOG_WIDTH = 200


def console(**options) -> Console:
    screen = Console(**options)
    if screen.is_terminal or "COLUMNS" in os.environ:
        return screen
    return Console(width=LOG_WIDTH, **options)
