"""headprobe.paths: the one resolver of the data folder, honoured by every head type."""

from pathlib import Path

import pytest

import headprobe
from headprobe.errors import DataNotFoundError, HeadprobeError
from headprobe.heads.ocr.ocr_reader import ocr_model_dir
from headprobe.heads.temporal.temporal_facts import data_path as temporal_data_path
from headprobe.organisms.adapters import packaged_adapter_dir
from headprobe.paths import data_dir, resource_path


def test_data_dir_default_and_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("HEADPROBE_DATA", raising=False)
    assert data_dir() == Path(headprobe.__file__).resolve().parents[1] / "data"
    monkeypatch.setenv("HEADPROBE_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=r"HEADPROBE_DATA is set to .*nowhere.*default is"):
        data_dir()
    assert issubclass(DataNotFoundError, HeadprobeError)


def test_every_data_user_follows_headprobe_data(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADPROBE_DATA", str(tmp_path))
    assert ocr_model_dir() == tmp_path / "ocr_model"
    assert packaged_adapter_dir("x") == tmp_path / "adapters" / "x"
    assert temporal_data_path("temporal").parent.parent == tmp_path


def test_resources_are_packaged():
    assert resource_path("haystack.txt").read_text(encoding="utf-8").strip()
