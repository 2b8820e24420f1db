"""Where lco keeps what it generates (tiny twins, rendered scene images): ``$LCO_CACHE`` or ``~/.cache/lco``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("LCO_CACHE", Path.home() / ".cache" / "lco"))
