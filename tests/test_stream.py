import pytest
import torch

from headprobe.errors import ReducerError
from headprobe.inputs import tokenize_prompts
from headprobe.prompts import repeated_random_tokens
from headprobe.registry import scan
from headprobe.runtime.stream import collect_per_prompt, stream_reduce


def _n_hooks(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def test_stream_reduce_matches_run_with_cache(tiny_llama):
    model, spec = tiny_llama
    prompts = tokenize_prompts(model, ["hello there", "a b", "abcabcabc"], spec)

    def real_token_sum(z, batch):  # [B, T, H, d] -> [B, H, d], padding left out
        return (z * batch.attention_mask[:, :, None, None]).sum(1)

    got = collect_per_prompt(model, spec, prompts, "z", real_token_sum, batch_size=2,
                             progress=False)  # [N, L, H, d_head]
    for index, ids in enumerate(prompts):
        _, cache = model.run_with_cache(ids[None])
        for layer in range(spec.n_layers):
            expected = cache[spec.hooks.at("z", layer)][0].sum(0)
            torch.testing.assert_close(got[index, layer], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("scorer", ["induction", "previous_token", "duplicate_token", "sink"])
def test_padding_never_leaks_into_scores(tiny_llama, side, scorer):
    """Prompts padded together in one batch score the same as each prompt scored alone."""
    model, spec = tiny_llama
    prompts = repeated_random_tokens(model, spec, 3, seq_len=12, seed=1)
    prompts[1] = prompts[1][:17]  # different lengths force padding
    prompts[2] = prompts[2][:21]

    def run(items, batch_size):
        data = {"prompts": items} if scorer == "sink" else items
        table = scan(model, scorer, data, progress=False, batch_size=batch_size,
                     padding_side=side)
        return torch.tensor(table["score"].to_numpy())

    batched = run(prompts, batch_size=3)
    alone = torch.stack([run([p], batch_size=1) for p in prompts]).mean(0)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_hooks_removed_when_a_reducer_raises(tiny_llama):
    model, spec = tiny_llama
    prompts = tokenize_prompts(model, ["abc"], spec)

    def broken(activation, context):
        raise RuntimeError("boom")

    before = _n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        stream_reduce(model, spec, prompts, {"pattern": broken}, progress=False)
    assert _n_hooks(model) == before


def test_hooks_removed_when_a_scorer_raises(tiny_llama):
    model, _ = tiny_llama
    before = _n_hooks(model)
    # prompts without any repeated token: induction has nothing to score and raises
    with pytest.raises(ValueError, match="no prompt has a position"):
        scan(model, "induction", ["abcdefg"], progress=False)
    assert _n_hooks(model) == before


def test_reducers_cannot_change_the_forward(tiny_llama):
    """A reducer that edits its activation in place is stopped, and leaves no hook behind."""
    model, spec = tiny_llama
    tokens = tokenize_prompts(model, ["hello"], spec)
    before = model(tokens[0][None])
    n_hooks = _n_hooks(model)
    with pytest.raises(ReducerError, match="in place"):
        stream_reduce(model, spec, tokens, {"z": lambda z, context: z.mul_(0)}, progress=False)
    assert _n_hooks(model) == n_hooks
    torch.testing.assert_close(model(tokens[0][None]), before)
    # an out-of-place reducer is fine and sees the real activation
    seen = []
    stream_reduce(model, spec, tokens, {"z": lambda z, context: seen.append(z.mul(0).sum())},
                  progress=False)
    assert len(seen) == spec.n_layers
