import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from headprobe.errors import OutputPathError
from headprobe.headtable import HeadTable


@pytest.fixture()
def table(tiny_llama):
    _, spec = tiny_llama
    grid = np.arange(spec.n_layers * spec.n_heads, dtype=float).reshape(spec.n_layers,
                                                                         spec.n_heads)
    return HeadTable.from_grid(grid, spec, columns={"other": -grid},
                               meta={"scorer": "demo", "model": spec.name, "seed": 3})


def test_long_format_and_kv_heads(table, tiny_llama):
    _, spec = tiny_llama
    assert list(table.data.columns[:4]) == ["layer", "head", "kv_head", "score"]
    assert len(table) == spec.n_total_heads
    row = table.data[(table["layer"] == 2) & (table["head"] == 3)].iloc[0]
    assert row.score == 11 and row.kv_head == 1 and row.other == -11
    assert table.meta["seed"] == 3


def test_top_heads_and_pivot(table):
    assert table.top(2)[["layer", "head"]].values.tolist() == [[2, 3], [2, 2]]
    assert table.heads(k=1) == [(2, 3)]
    assert table.heads(threshold=9.5) == [(2, 3), (2, 2)]
    grid = table.pivot()
    assert grid.shape == (3, 4) and grid.loc[1, 2] == 6


def test_heatmap_is_returned_not_shown(table):
    figure = table.heatmap()
    assert isinstance(figure, go.Figure)
    assert np.asarray(figure.data[0].z).shape == (3, 4)


def test_save_and_load_round_trip(table, tmp_path):
    folder = table.save(tmp_path / "out")
    names = {p.name for p in folder.iterdir()}
    assert {"demo.parquet", "demo.csv", "demo.html", "meta.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert json.loads((folder / "meta.json").read_text())["seed"] == 3
    loaded = HeadTable.load(folder)
    pd.testing.assert_frame_equal(loaded.data, table.data, check_dtype=False)
    assert loaded.meta["scorer"] == "demo"
    assert pd.read_csv(folder / "demo.csv").shape == table.data.shape


def test_output_dir_that_is_a_file(table, tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        table.save(path)


def test_join_and_correlations(table, tiny_llama):
    _, spec = tiny_llama
    other = HeadTable.from_grid(table.pivot().to_numpy() ** 2, spec, meta={"scorer": "squared"})
    wide = HeadTable.join([table, other])
    assert list(wide.columns) == ["layer", "head", "kv_head", "demo", "squared"]
    corr = HeadTable.correlations([table, other])
    assert corr.loc["demo", "squared"] == pytest.approx(1.0)  # monotone -> Spearman 1


def test_bad_grid_shape(tiny_llama):
    _, spec = tiny_llama
    with pytest.raises(ValueError, match="grid"):
        HeadTable.from_grid(np.zeros((2, 2)), spec)
    with pytest.raises(ValueError, match="missing"):
        HeadTable(pd.DataFrame({"layer": [0]}))
