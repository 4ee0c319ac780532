"""Stand-in for uv (and its installer): nothing is downloaded; the environment is this machine's.

``uv venv DEST``: DEST/bin/python and DEST/bin/mlflow run this machine's Python and MLflow; DEST/bin/activate
puts them first on PATH.
``uv pip install [-c FILE] [-e PATH[extras]] [NAME...]``: checks that the constraints file exists and that
every requirement of the project at PATH with those extras (and each named package) is installed here,
following the extras of those requirements one level (``mlflow[auth]`` needs Flask-WTF); fails otherwise.
"""
import os
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PYTHON = sys.executable


def log(*words: str) -> None:
    with open(Path.home() / "stand-ins.log", "a") as f:
        f.write(" ".join(["uv", *words]) + "\n")


def missing(requirement: str) -> list[str]:
    req = Requirement(requirement)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        return []
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return [requirement]
    if req.specifier and not req.specifier.contains(installed.split("+")[0], prereleases=True):
        return [f"{requirement} (installed: {installed})"]
    found = []
    for extra in req.extras:
        for dep in metadata.requires(req.name) or []:
            dep_req = Requirement(dep)
            if dep_req.marker and dep_req.marker.evaluate({"extra": extra}) and not dep_req.marker.evaluate({"extra": ""}):
                found += missing(f"{dep_req.name}{dep_req.specifier}")
    return found


def project_requirements(spec: str) -> list[str]:
    path, _, extras = spec.partition("[")
    project = tomllib.loads((Path(os.path.expanduser(path)) / "pyproject.toml").read_text())["project"]
    reqs, optional = list(project["dependencies"]), project.get("optional-dependencies", {})
    for extra in filter(None, extras.rstrip("]").split(",")):
        if extra not in optional:
            sys.exit(f"uv stand-in: {path} has no extra {extra!r} (it has {sorted(optional)})")
        for dep in optional[extra]:
            name, _, inner = dep.partition("[")
            if name == project["name"]:  # an extra that names others of the same project
                reqs += project_requirements(f"{path}[{inner}")
            else:
                reqs.append(dep)
    return reqs


def venv(dest: Path) -> None:
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    for name, program in {"python": f'exec {PYTHON} "$@"', "mlflow": f'exec {PYTHON} -m mlflow "$@"'}.items():
        (dest / "bin" / name).write_text(f"#!/bin/sh\n{program}\n")
        (dest / "bin" / name).chmod(0o755)
    (dest / "bin" / "activate").write_text(f'VIRTUAL_ENV="{dest}"\nPATH="{dest}/bin:$PATH"\nexport VIRTUAL_ENV PATH\n')


def pip_install(args: list[str]) -> None:
    wanted, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg in ("--python", "--torch-backend", "-c", "--index-url"):
            value = args[i + 1]
            if arg == "-c" and not Path(os.path.expanduser(value)).is_file():
                sys.exit(f"uv stand-in: no constraints file {value}")
            i += 2
            continue
        if arg == "-e":
            wanted += project_requirements(args[i + 1])
            i += 2
            continue
        wanted.append(arg)
        i += 1
    absent = [m for req in wanted for m in missing(req)]
    if absent:
        sys.exit(f"uv stand-in: not installed on this machine: {absent}")
    print(f"uv stand-in: all {len(wanted)} requirements are installed on this machine; nothing downloaded")


def main(argv: list[str]) -> None:
    log(*argv)
    if argv[:1] == ["venv"]:
        venv(Path(os.path.expanduser(argv[-1])))
    elif argv[:2] == ["pip", "install"]:
        pip_install(argv[2:])
    else:
        sys.exit(f"uv stand-in: {' '.join(argv)} is not something the cluster's setup runs")


main(sys.argv[1:])
