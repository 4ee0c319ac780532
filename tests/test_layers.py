"""docs/design.md's layers, read off the source: which package may import which, and where Ray and MLflow live.

Every import counts, also one inside a function: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "search_spaces")

# A layer may import itself and the layers listed here; ``study`` (the entry points: scaling, run, report,
# export, cli) stitches everything together.
MAY_IMPORT = {
    "search_spaces": set(),
    "study.core": set(),
    "study.selection": {"study.core"},
    "study.runs": {"study.core", "study.selection", "search_spaces"},
    "study.analysis": {"study.core", "study.selection", "study.runs"},
    "trainables": {"study.core", "study.selection", "study.runs", "study.analysis"},
    "study": {"study.core", "study.selection", "study.runs", "study.analysis", "trainables", "search_spaces"},
}


def layer(module: str) -> str | None:
    """The most specific layer a dotted module name falls in (None for a third-party module)."""
    for name in sorted(MAY_IMPORT, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def modules() -> dict[str, list[str]]:
    """Dotted name -> every module it imports, for each of the project's own source files."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            imported = []
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    imported.append(node.module)
            out[name] = imported
    return out


SOURCES = modules()


def test_the_layers_exist_and_hold_the_source():
    assert {layer(m) for m in SOURCES} == set(MAY_IMPORT)
    assert all(layer(m) is not None for m in SOURCES)


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_a_module_imports_only_its_own_and_lower_layers(module):
    own = layer(module)
    wrong = [m for m in SOURCES[module] if layer(m) not in (None, own, *MAY_IMPORT[own])]
    assert not wrong, f"{module} ({own}) imports {wrong}; {own} may import {sorted(MAY_IMPORT[own])}"


def test_ray_stays_in_trainables_and_mlflow_in_one_module():
    ray_users = {m for m, imported in SOURCES.items() if any(i == "ray" or i.startswith("ray.") for i in imported)}
    mlflow_users = {m for m, imported in SOURCES.items() if any(i.split(".")[0] == "mlflow" for i in imported)}
    assert ray_users and all(layer(m) == "trainables" for m in ray_users), ray_users
    assert mlflow_users == {"study.runs.tracking"}, mlflow_users
