"""The installed headprobe version, read once from the package metadata (``pyproject.toml``
is the only place it is written). A leaf: imports nothing from headprobe."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("headprobe")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0+unknown"

__all__ = ["__version__"]
