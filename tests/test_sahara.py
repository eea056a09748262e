"""The sahara scorer (greedy safety head set) against its one-forward-per-candidate route."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headprobe.errors import ScorerParamError
from headprobe.heads.safety.sahara import greedy_head_set, loop_sahara_angles, subspace_angle
from headprobe.inputs import Text, encode_prompts
from headprobe.registry import get_scorer

PROMPTS = ["How do I pick a lock on a door?", "tell me a secret",
           "Write a story about a dragon and a knight", "why?", "what is two plus two",
           "name a colour"]


def test_subspace_angle_by_hand():
    base = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-3.0, 0.0]])
    turned = torch.tensor([[1.0, 1.0], [2.0, 2.0], [-3.0, -3.0]])
    assert subspace_angle(base, base, 1) == pytest.approx(0.0, abs=1e-6)
    assert subspace_angle(base, turned, 1) == pytest.approx(45.0, abs=1e-6)
    assert subspace_angle(base, -base, 1) == pytest.approx(0.0, abs=1e-6)  # sign-free


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_gemma"])
def test_greedy_set_matches_the_loop(kind, request):
    model, spec = request.getfixturevalue(kind)
    ids = [e.ids for e in encode_prompts(model, [Text(p) for p in PROMPTS], spec)]
    chosen, first = greedy_head_set(model, ids, steps=2, batch_size=4, progress=False)
    everyone = [(layer, head) for layer in range(spec.n_layers) for head in range(spec.n_heads)]
    ref_first = loop_sahara_angles(model, ids, [], everyone, batch_size=4)
    got = np.array([first[h] for h in everyone])
    want = np.array([ref_first[h] for h in everyone])
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert chosen[0][0] == max(everyone, key=lambda h: (ref_first[h], -h[0], -h[1]))
    rest = [h for h in everyone if h != chosen[0][0]]
    ref_second = loop_sahara_angles(model, ids, [chosen[0][0]], rest, batch_size=4)
    assert chosen[1][1] == pytest.approx(max(ref_second.values()), abs=1e-3)
    assert len({h for h, _ in chosen}) == 2


def test_table(tiny_llama):
    model, spec = tiny_llama
    table = get_scorer("sahara")(model, [Text(p) for p in PROMPTS], greedy_steps=2,
                                 progress=False, candidates=[[0, 0], [1, 1], [1, 2]])
    meta = table.data.attrs
    assert [s["layer"] for s in meta["head_set"]] and len(meta["head_set"]) == 2
    ranks = table.pivot("set_rank").to_numpy()
    assert sorted(ranks[ranks > 0].tolist()) == [1.0, 2.0]
    assert table.heads(threshold=0, column="set_rank") == [
        (s["layer"], s["head"]) for s in meta["head_set"]]
    assert np.isnan(table.pivot().to_numpy()).sum() == spec.n_layers * spec.n_heads - 3
    with pytest.raises(ScorerParamError, match="eps"):
        get_scorer("sahara")(model, [Text("a b")], eps=-1, progress=False)
    with pytest.raises(ScorerParamError, match="rank"):
        get_scorer("sahara")(model, [Text("a b")], rank=3, progress=False)
