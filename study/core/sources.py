"""Which code computed a result: a version of the project modules it ran, blind to comments and docstrings.

A result (a trial, or one cache entry: a teacher, a score, a selection) names
the modules that compute it; its code version covers those modules and every
project module they import, found by reading their ``import`` statements
(those inside functions too), so nobody lists dependencies or bumps a version
by hand. An edit to one selector changes the version of that selector's
selections and of the trials, not the teacher's, which no teacher module imports.

Each module counts as its syntax tree with docstrings (every bare string
statement) removed (``ast.dump``), so a comment, a docstring or a re-wrapped
line changes nothing, while any change to what runs does. The dump's format belongs to the Python version, so
the version is part of the digest: a Python upgrade (3.12 to 3.13, not a
patch release) changes every code version once, and with them every cache key
and every trial's recorded version (``--stale reuse`` accepts those trials).
A package's ``__init__.py`` counts only when it is imported by its own name.
"""
from __future__ import annotations

import ast
import hashlib
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterable

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("study", "trainables", "search_spaces")


def module_path(name: str, root: Path) -> Path | None:
    """The source file of project module ``name`` under ``root``, None when it is not one."""
    if name.partition(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` without its docstrings: every statement that is a bare string (a module's, class's or
    function's docstring, or an attribute's documenting string after it), which runs as nothing."""
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            statements = getattr(node, name, None)
            if isinstance(statements, list) and statements and isinstance(statements[0], ast.stmt):
                kept = [s for s in statements if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                      and isinstance(s.value.value, str))]
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
    return tree


def imported(tree: ast.AST, root: Path) -> set[str]:
    """The project modules ``tree`` imports anywhere (``from a.b import c`` is ``a.b.c`` when that is a module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if module_path(name, root)}


@lru_cache(maxsize=None)
def parsed(name: str, root: Path) -> tuple[str, frozenset[str]]:
    """(the digest of module ``name``'s code, the project modules it imports)."""
    path = module_path(name, root)
    if path is None:
        raise ValueError(f"{name} is not a module of the project under {root}")
    tree = ast.parse(path.read_text(), filename=str(path))
    code = ast.dump(without_docstrings(tree), annotate_fields=False)
    return hashlib.sha256(code.encode()).hexdigest(), frozenset(imported(tree, root))


def closure(modules: Iterable[str], root: Path = PROJECT) -> list[str]:
    """``modules`` and every project module they import, directly or not, sorted."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(parsed(name, root)[1])
    return sorted(seen)


@lru_cache(maxsize=None)
def scoped_version(modules: tuple[str, ...], root: Path) -> str:
    digest = hashlib.sha256(f"python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    for name in closure(modules, root):
        digest.update(f"{name} {parsed(name, root)[0]}\n".encode())
    return digest.hexdigest()[:16]


def code_version(modules: Iterable[str], root: Path | None = None) -> str:
    """16 hex digits over the code of ``modules`` and all they import, under ``root`` (this checkout)."""
    return scoped_version(tuple(sorted(set(modules))), Path(root or PROJECT))
