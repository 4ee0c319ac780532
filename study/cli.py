"""Shared command-line plumbing: user errors become one sentence and exit code 2, never a traceback."""
from __future__ import annotations

import functools
import sys

from study.core.errors import StudyError


def friendly_errors(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except StudyError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted; finished work is kept, rerun the same command to resume.", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
