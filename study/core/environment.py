"""The environment variables that configure a study, as this process resolved them, for every Ray worker.

They are read where they apply: the cache root in study.core.cache, the decoded
side and the unreadable-image policy of ImageFolder trees in study.core.data. A
worker on another node of a cluster is started by that node's raylet, not by
the driver, and sees none of the driver's variables: a study started with
HARDTRUTHS_IMAGEFOLDER_SIZE=224 decoded its trials' images at the default 64 px
there, and looked for the tree's scan in that node's own default cache, so
decoded the whole tree again. The driver hands these values to Ray with the
job (trainables.tune_study.connect); the cache root goes as an absolute path,
and with them the tree listings the driver published (study.core.listing).
"""
from __future__ import annotations

from pathlib import Path

from study.core import cache, data, listing


def study_environment() -> dict[str, str]:
    return {"HARDTRUTHS_CACHE": str(Path(cache.DEFAULT_ROOT).expanduser().resolve()),
            "HARDTRUTHS_IMAGEFOLDER_SIZE": str(data.IMAGEFOLDER_SIZE),
            "HARDTRUTHS_BAD_IMAGES": data.BAD_IMAGES, **listing.environment()}
