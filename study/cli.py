"""Shared command-line plumbing: user errors become one sentence and exit code 2, never a traceback; help texts
show every default and no reStructuredText markup; every command resolves its settings one way (presets,
then flags, then --set, study.runs.spec) and prints or takes back what it resolved (--print-config,
--config)."""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path

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


def add_resolution_args(p: argparse.ArgumentParser, what: str, files: str) -> None:
    """The flags by which every command resolves its settings: preset, dataset, --set, and the resolved
    ``what`` printed (--print-config) or taken back (--config)."""
    p.add_argument("--config", default=None, metavar="FILE",
                   help=f"a resolved {what} to start from ({files}); flags and --set then change single settings "
                        f"(default: none, built from the preset and the flags)")
    p.add_argument("--print-config", action="store_true",
                   help=f"print the resolved {what} as JSON (what --config takes back) and exit")
    from search_spaces import PRESETS

    p.add_argument("--preset", default=None, help=f"dataset protocol (model, batch, recipe, teacher): "
                                                  f"{', '.join(PRESETS)} (default: the dataset's own preset)")
    p.add_argument("--dataset", default=None, help="dataset; brings its own preset when it has one, else needs "
                                                   "--preset (default: the preset's dataset)")
    p.add_argument("--data-root", default=None, help="folder holding torchvision / IDX datasets (default: the "
                                                     "dataset's usual places)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol setting, e.g. --set temperature=2 --set model_kwargs.width=64 "
                        "--set teacher.epochs=8 --set selector_params.dm.iterations=200")


def read_config(path: str) -> dict:
    """The JSON object in FILE: the file itself, or its ``config`` entry (a record, study.run's --json output)."""
    try:
        found = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as err:
        raise StudyError(f"--config {path} is not a readable JSON file ({err}).") from None
    found = found.get("config", found) if isinstance(found, dict) else found
    if not isinstance(found, dict):
        raise StudyError(f"--config {path} holds no config (a JSON object of settings).")
    return found


def print_config(config: dict) -> None:
    print(json.dumps(config, indent=1))
