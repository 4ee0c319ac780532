"""The driver's progress bars: done of all, elapsed and remaining time, under the lines the driver prints.

Drawn only on a terminal; where the output is a file or a pipe the printed
lines alone say how far a study is.
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def progress_bar(what: str, console: Console | None = None) -> Progress:
    console = console or Console()
    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)
