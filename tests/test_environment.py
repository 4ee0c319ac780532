"""The tested environment is the pinned one: every package `pip install -e '.[dev]'` brings is pinned in
constraints.txt and installed at exactly that version."""
from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

# What only a CUDA build of torch installs: absent beside a CPU build (or on macOS), so checked where present.
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def pins() -> dict[str, str]:
    text = (ROOT / "constraints.txt").read_text()
    return {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)$", text, re.M)}


def closure(project: str, extras: set[str]) -> set[str]:
    """Every distribution installing ``project[extras]`` brings, by walking the installed metadata with each
    requirement's markers evaluated here (so platform-specific requirements count only where they apply)."""
    seen, todo = set(), [(project, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            active = any(req.marker is None or req.marker.evaluate({"extra": e}) for e in wanted | {""})
            dep = canonicalize_name(req.name)
            if active and (dep, frozenset(req.extras)) not in seen:
                seen.add((dep, frozenset(req.extras)))
                todo.append((dep, frozenset(req.extras)))
    return {name for name, _ in seen} - {canonicalize_name(project)}  # an extra naming the project's own extras


def installed(name: str) -> str | None:
    try:
        return metadata.version(name).split("+")[0]
    except metadata.PackageNotFoundError:
        return None


def test_every_package_of_the_dev_install_is_pinned():
    unpinned = sorted(closure("hardtruths", {"dev"}) - set(pins()))
    assert not unpinned, f"installed by '.[dev]' but not in constraints.txt (run scripts/update-pins): {unpinned}"


def test_installed_versions_equal_the_pins():
    wanted = closure("hardtruths", {"dev"})
    drifted = {}
    for name, pinned in pins().items():
        have = installed(name)
        if have is None:
            assert CUDA_ONLY.match(name) or name not in wanted, f"{name} is required by '.[dev]' but not installed"
            continue
        if have != pinned:
            drifted[name] = (pinned, have)
    assert not drifted, f"installed versions differ from constraints.txt (pinned, installed): {drifted}"


def test_pins_are_exact_and_cover_the_direct_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    assert direct <= set(pins()), direct - set(pins())
    lines = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9][\w.-]*==[\w.]+", ln) for ln in lines), "only exact pins, no ranges"
