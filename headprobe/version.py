"""headprobe's version, read once from the installed package's metadata (``pyproject.toml``
is the one place it is written); a leaf, so any layer may ask for it."""

from __future__ import annotations

import importlib.metadata
from functools import cache

# Reported when headprobe runs from a source tree that was never installed.
UNKNOWN_VERSION = "0+unknown"


@cache
def headprobe_version() -> str:
    """The installed headprobe version (``importlib.metadata``), or :data:`UNKNOWN_VERSION`
    when no distribution named ``headprobe`` is installed."""
    try:
        return importlib.metadata.version("headprobe")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION


__version__: str = headprobe_version()
