"""Every document the repository cites is in the repository: users get the repository, nothing beside it.

The design notes live in docs/design.md; a citation of notes kept outside the
checkout (a design file at the top level, a folder next to the checkout) points
a reader at nothing.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\bDESIGN\.md\b|\.\./shared\b")  # the notes the design doc replaced, and their folder
DOCS = re.compile(r"(?<![\w/.])docs/[\w./-]+\.md\b")


def repository_files() -> list[Path]:
    """The files git tracks or would track (untracked ones it does not ignore), text only."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    files = []
    for name in listed:
        path = REPO / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def test_no_file_cites_a_document_outside_the_repository():
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for path in repository_files()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "cites a document outside the repository (the design is docs/design.md):\n" + "\n".join(found)


def test_every_cited_doc_exists():
    missing = sorted({f"{path.relative_to(REPO)} cites {m}" for path in repository_files()
                      for m in DOCS.findall(path.read_text(errors="replace")) if not (REPO / m).is_file()})
    assert not missing, "\n".join(missing)
