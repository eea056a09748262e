"""Tests of headprobe.fastscan.sums: scans of disjoint prompts or layers merge into the table
of one scan of everything (what a sharded scan relies on)."""

from __future__ import annotations

import pytest
import torch
from test_fastscan import TINY_ITEMS

from headprobe.fastscan import prepare_scan_data, scan_heads
from headprobe.fastscan.patching import scan_params, scan_sums
from headprobe.fastscan.sums import ScanSums, merge_sums, scan_table
from headprobe.inputs import fingerprint
from headprobe.interventions.means import pooled_head_means

ITEMS = [*TINY_ITEMS, TINY_ITEMS[0], TINY_ITEMS[2]]  # 6 pairs: 3 batches of 2


def _table(model, spec, data, sums, method, metric, layers):
    return scan_table(sums, spec, metric=metric,
                      params=scan_params(method, metric, "denoising", layers, spec.n_heads,
                                         True, 1e-4),
                      fingerprint=fingerprint(data.clean + (data.corrupt or [])),
                      task=data.name, batch_size=2)


@pytest.mark.parametrize("method,metric", [("patch", "normalized_logit_diff"),
                                           ("mean", "logit_diff")])
def test_prompt_and_layer_shards_merge_to_the_whole(tiny_llama, method, metric):
    model, spec = tiny_llama
    whole = scan_heads(model, ITEMS, method=method, metric=metric, batch_size=2,
                       progress=False)
    data = prepare_scan_data(model, ITEMS, need_corrupt=method == "patch")
    layers = list(range(spec.n_layers))
    options = {"method": method, "metric": metric, "batch_size": 2, "progress": False}
    mean_z = (pooled_head_means(model, layers, data.clean, batch_size=2)
              if method == "mean" else None)  # the mean over all prompts, as the whole scan
    by_prompts = [scan_sums(model, data.subset(rows), offset=rows[0], mean_z=mean_z, **options)
                  for rows in ([0, 1], [2, 3], [4, 5])]
    by_layers = [scan_sums(model, data, layers=group, mean_z=mean_z, **options)
                 for group in ([0], [1, 2])]
    for parts in (by_prompts, by_layers):
        table = _table(model, spec, data, merge_sums(parts), method, metric, layers)
        for column in ("score", "std", "mean_ld"):
            diff = (table[column] - whole[column]).abs().max()
            assert diff <= 1e-6, (column, diff)
        assert table.meta["shared_prefix_lengths"] == whole.meta["shared_prefix_lengths"]
        assert table.meta["mean_ld_clean"] == pytest.approx(whole.meta["mean_ld_clean"])
        assert table.meta["params"] == whole.meta["params"]
    # a shard's own mean (not the whole set's) gives different mean-ablation numbers
    if method == "mean":
        own = merge_sums(scan_sums(model, data.subset(rows), offset=rows[0], **options)
                         for rows in ([0, 1], [2, 3], [4, 5]))
        assert (_table(model, spec, data, own, method, metric, layers)["score"]
                - whole["score"]).abs().max() > 1e-4


def test_missing_or_doubled_shard_is_refused(tiny_llama):
    model, spec = tiny_llama
    data = prepare_scan_data(model, ITEMS, need_corrupt=True)
    first = scan_sums(model, data, layers=[0], batch_size=2, progress=False)
    rest = scan_sums(model, data.subset([0, 1]), layers=[1, 2], batch_size=2, progress=False)
    layers = list(range(spec.n_layers))
    with pytest.raises(ValueError, match="different numbers of prompts"):
        _table(model, spec, data, first.merge(rest), "patch", "logit_diff", layers)
    with pytest.raises(ValueError, match="different numbers of prompts"):  # merged twice
        _table(model, spec, data, merge_sums([first, first, rest, rest, rest]), "patch",
               "logit_diff", layers)
    ablation = scan_sums(model, data, layers=[1], method="zero", batch_size=2,
                         progress=False)
    ablation.has_corrupt = False
    with pytest.raises(ValueError, match="corrupt"):
        first.merge(ablation)
    with pytest.raises(ValueError, match="no scan sums"):
        merge_sums([])


def test_state_round_trip(tiny_llama):
    model, _ = tiny_llama
    data = prepare_scan_data(model, ITEMS, need_corrupt=True)
    sums = scan_sums(model, data.subset([2, 3]), offset=2, batch_size=2, progress=False)
    back = ScanSums.from_state(sums.state())
    assert back.prefix_lengths == sums.prefix_lengths and 2 in back.prefix_lengths
    for name in ("effect", "effect_sq", "value", "n", "ld_clean", "ld_corrupt", "ld_base"):
        assert torch.equal(getattr(back, name), getattr(sums, name))
    assert int(sums.n.max()) == 2


def test_subset_checks_rows(tiny_llama):
    model, _ = tiny_llama
    data = prepare_scan_data(model, ITEMS, need_corrupt=True)
    part = data.subset([4, 1])
    assert len(part) == 2 and torch.equal(part.clean[0], data.clean[4])
    assert torch.equal(part.answers, data.answers[[4, 1]])
    with pytest.raises(IndexError):
        data.subset([6])
