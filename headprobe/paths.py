"""Where headprobe's data lives: one resolver for each of its two homes.

- Small text data shipped inside the package (haystack, needles, facts, sink domains):
  ``headprobe/resources/``, read with :func:`resource_path` (works from a wheel too).
- Larger assets kept in the repository's ``data/`` folder (request sets, temporal facts, LoRA
  adapters, the OCR model's weights): :func:`data_dir`, which ``$HEADPROBE_DATA`` overrides.

A leaf module: it imports only :mod:`headprobe.errors`.
"""

from __future__ import annotations

import os
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from headprobe.errors import DataNotFoundError

DATA_ENV = "HEADPROBE_DATA"
REPOSITORY_DATA = Path(__file__).resolve().parents[1] / "data"


def data_dir() -> Path:
    """The project's ``data/`` folder: ``$HEADPROBE_DATA`` when set, else the repository's
    ``data/`` next to the ``headprobe`` package.

    Raises:
        DataNotFoundError: the folder does not exist (the message names both places).
    """
    configured = os.environ.get(DATA_ENV)
    folder = Path(configured).expanduser() if configured else REPOSITORY_DATA
    if not folder.is_dir():
        where = (f"${DATA_ENV} is set to {configured!r}, which is not a folder"
                 if configured else f"${DATA_ENV} is not set")
        raise DataNotFoundError(
            f"cannot find headprobe's data folder: {where}, and the default is "
            f"{REPOSITORY_DATA}. Set {DATA_ENV} to the repository's data/ folder, or run "
            "from a checkout of the repository")
    return folder


def data_path(*parts: str) -> Path:
    """``data_dir() / parts...`` (the path need not exist)."""
    return data_dir().joinpath(*parts)


def resource_path(name: str) -> Traversable:
    """The packaged resource ``headprobe/resources/<name>``."""
    return resources.files("headprobe.resources").joinpath(name)
