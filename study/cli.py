"""Shared command-line plumbing: user errors become one sentence and exit code 2, never a traceback; help texts
show every default and no reStructuredText markup."""
from __future__ import annotations

import argparse
import functools
import re
import sys

from study.core.errors import StudyError

ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str | None) -> str:
    """A module docstring as terminal text: Sphinx roles (:func:`x`) and literals (``x``) lose their markup."""
    return ROLE.sub(r"\1", text or "").replace("``", "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and argparse's ``(default: X)`` after every option whose help does not
    already say its default in words (a default of None always needs the words: "None" tells nobody anything)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default in (None, argparse.SUPPRESS):
            return text
        shown = "off" if action.default is False else "none" if action.default == [] else "%(default)s"
        return f"{text} (default: {shown})"


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=plain(doc), formatter_class=HelpFormatter)


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
