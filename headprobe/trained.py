"""A small attention-only model trained on the CPU until induction heads formed.

The ``trained`` ground truth of :mod:`headprobe.groundtruth`: a 2-layer Llama (rotary,
RMSNorm, 4 heads of 16 dims, d_model 64, :func:`headprobe.tiny.char_tokenizer`'s ~100-token
vocabulary) whose MLPs are zeroed and frozen, so it is attention-only, trained from a fixed
seed on repeated random token sequences (``BOS + r + r``, ``r`` a random sequence of
``L`` distinct tokens: Olsson et al. 2022, "In-context Learning and Induction Heads"). Once
trained, the loss on the second copy falls far below the loss on the first (the in-context
loss drop), which only attention to the first copy can explain.

Which heads do it is then found by a causal test that shares no code with headprobe's
scorers (:func:`causal_head_effects`): each head's output is zeroed in the plain Hugging Face
model (a pre-hook on ``o_proj``) and the fraction of the in-context loss drop that is lost is
measured. The heads whose ablation removes most of the drop are the known heads:
:data:`INDUCTION_HEADS` in layer 1 and the :data:`PREVIOUS_TOKEN_HEADS` of layer 0 they
read from through their keys (a path-specific ablation), with the numbers measured on the
shipped weights beside them (:data:`SINGLE_HEAD_REMOVED`, :data:`KEY_PATH_REMOVED`).

The recipe is seed-sensitive: with seed 0 the induction heads form at about step 1000 of
1500; seeds 1 and 2 had not left the plateau after 2000 steps (second-copy loss ~4.23).

- :func:`train_induction_model` is the training recipe (``recipes/train_induction_model.py``
  runs it and rewrites the shipped file);
- :func:`trained_induction_model` loads the shipped weights
  (``headprobe/resources/trained_induction.safetensors``) offline, without training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.types import Head

TRAINED_MODEL_ID = "trained-induction"
WEIGHTS_FILE = "trained_induction.safetensors"

N_LAYERS = 2
N_HEADS = 4
D_HEAD = 16
D_MODEL = N_HEADS * D_HEAD


@dataclass(frozen=True)
class TrainSettings:
    """The training recipe of the shipped model (its defaults are the shipped run's).

    Attributes:
        seed: seeds the initial weights and the data stream.
        steps: optimiser steps.
        batch_size: sequences per step.
        min_len / max_len: each step draws one ``L`` in ``[min_len, max_len]``; its sequences
            are ``BOS + r + r`` with ``r`` ``L`` distinct random non-special tokens.
        learning_rate: AdamW's peak rate (linear warm-up, then cosine decay to a tenth).
        warmup: warm-up steps.
        weight_decay: AdamW's weight decay.
    """

    seed: int = 0
    steps: int = 1500
    batch_size: int = 32
    min_len: int = 8
    max_len: int = 50
    learning_rate: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01


def induction_config(vocab_size: int) -> Any:
    """The trained model's ``LlamaConfig``: 2 layers, 4 heads (one kv head each) of 16 dims,
    d_model 64, rotary base 10000, 256 positions, an 8-wide MLP that is zeroed and frozen."""
    import transformers as tf

    config = tf.LlamaConfig(
        vocab_size=vocab_size, hidden_size=D_MODEL, intermediate_size=8,
        num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS,
        head_dim=D_HEAD, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, architectures=["LlamaForCausalLM"])
    config._attn_implementation = "eager"
    return config


def _attention_only(hf_model: Any) -> Any:
    """Zero every MLP's output projection and freeze the MLPs: the model is attention-only."""
    with torch.no_grad():
        for layer in hf_model.model.layers:
            layer.mlp.down_proj.weight.zero_()
            for param in layer.mlp.parameters():
                param.requires_grad_(False)
    return hf_model


def new_induction_hf_model(seed: int = 0) -> tuple[Any, Any]:
    """A freshly initialised (untrained) attention-only model and its tokenizer:
    ``(hf_model, tokenizer)``. The global RNG is left as it was."""
    import transformers as tf

    from headprobe.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        hf_model = tf.LlamaForCausalLM(induction_config(len(tokenizer)))
    finally:
        torch.random.set_rng_state(state)
    return _attention_only(hf_model), tokenizer


def token_pool(tokenizer: Any) -> torch.Tensor:
    """[V'] the non-special token ids the sequences are drawn from."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def repeated_sequences(pool: torch.Tensor, bos_id: int, batch_size: int, length: int,
                       generator: torch.Generator) -> torch.Tensor:
    """[B, 1 + 2 L] ``BOS + r + r`` with ``r`` ``length`` distinct tokens of ``pool``."""
    order = torch.rand(batch_size, len(pool), generator=generator).argsort(dim=1)
    body = pool[order[:, :length]]
    bos = torch.full((batch_size, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, body, body], dim=1)


def half_losses(hf_model: Any, tokens: torch.Tensor) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of ``BOS + r + r``.

    Both halves score the same ``L - 1`` predictions (of ``r[1:]``): the first copy's
    tokens 2..L and the second copy's tokens L+2..2L; ``r[0]`` is left out of both (after
    ``BOS`` and after ``r[-1]`` nothing predicts it). The in-context loss drop is
    ``first - second``.
    """
    length = (tokens.shape[1] - 1) // 2
    logits = hf_model(tokens).logits.detach().float()  # [B, T, V]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # [B, T-1]
    # loss[:, t - 1] is the loss of predicting token t
    first = losses[:, 1:length].mean()
    second = losses[:, length + 1:].mean()
    return float(first), float(second)


def train_induction_model(
    seed: int = 0,
    steps: int | None = None,
    *,
    settings: TrainSettings | None = None,
    log_every: int = 100,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Train the attention-only model on repeated random sequences (the shipped recipe).

    Every step draws ``L`` and a batch of ``BOS + r + r`` sequences from a generator seeded
    by ``seed``, and minimises the next-token loss on all positions with AdamW (MLPs
    frozen at zero). Every ``log_every`` steps it measures the first- and second-copy losses
    (:func:`half_losses`) on a fixed held-out batch of ``L = 30`` and passes the record to
    ``on_log``. Runs on the CPU in fp32; the torch thread count is left as it is.

    Returns:
        ``(hf_model, tokenizer, report)``: the model in eval mode, and a report with the
        settings, the wall time in seconds and the log records.
    """
    settings = settings or TrainSettings()
    settings = TrainSettings(**{**asdict(settings), "seed": seed,
                                "steps": settings.steps if steps is None else steps})
    hf_model, tokenizer = new_induction_hf_model(settings.seed)
    pool = token_pool(tokenizer)
    bos = int(tokenizer.bos_token_id)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    held_out = repeated_sequences(pool, bos, 64, 30,
                                  torch.Generator().manual_seed(settings.seed + 2))
    trainable = [p for p in hf_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    total = max(settings.steps, 1)

    def rate(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(total - settings.warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    log: list[dict[str, float]] = []

    def record(step: int, train_loss: float) -> None:
        hf_model.eval()
        with torch.no_grad():
            first, second = half_losses(hf_model, held_out)
        hf_model.train()
        entry = {"step": step, "train_loss": train_loss, "first_half": first,
                 "second_half": second, "seconds": time.perf_counter() - start}
        log.append(entry)
        if on_log is not None:
            on_log(entry)

    start = time.perf_counter()
    hf_model.train()
    train_loss = float("nan")
    for step in range(settings.steps):
        length = int(torch.randint(settings.min_len, settings.max_len + 1, (1,),
                                   generator=generator))
        tokens = repeated_sequences(pool, bos, settings.batch_size, length, generator)
        logits = hf_model(tokens).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        train_loss = float(loss.detach())
        if log_every and step % log_every == 0:
            record(step, train_loss)
    record(settings.steps, train_loss)
    hf_model.eval()
    report = {"settings": asdict(settings), "seconds": time.perf_counter() - start,
              "log": log}
    return hf_model, tokenizer, report


@contextmanager
def heads_zeroed(hf_model: Any, heads: Iterable[Head]) -> Iterator[None]:
    """Within the block, the outputs of ``heads`` are zero: a forward pre-hook on each
    layer's ``o_proj`` zeroes the head's ``d_head`` slice of its input. Hooks are removed on
    exit, also on error."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    d_head = hf_model.config.head_dim
    handles = []

    def make_hook(indices: list[int]) -> Callable[..., Any]:
        def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0].clone()
            for index in indices:
                x[..., index * d_head:(index + 1) * d_head] = 0
            return (x, *args[1:])
        return hook

    try:
        for layer, indices in by_layer.items():
            o_proj = hf_model.model.layers[layer].self_attn.o_proj
            handles.append(o_proj.register_forward_pre_hook(make_hook(indices)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def heads_removed_from_path(hf_model: Any, heads: Iterable[Head], reader: int,
                            path: str) -> Iterator[None]:
    """Within the block, the outputs of ``heads`` are removed from one input of layer
    ``reader``'s attention only (a path-specific ablation: ``path`` is ``"q"``, ``"k"`` or
    ``"v"``); every other reader of the residual stream still sees them.

    The reader's ``{path}_proj`` sees ``RMSNorm(resid - sum_h out_h)`` instead of
    ``RMSNorm(resid)``, where ``resid`` [B, T, d_model] is the residual stream entering layer
    ``reader`` and ``out_h = z_h @ W_O[:, h]^T`` head ``h``'s write. In an attention-only
    model, layer-0 heads whose removal from the layer-1 *keys* removes the in-context loss
    drop are the previous-token half of the induction circuit (K-composition, Olsson et al.
    2022). Hooks are removed on exit, also on error.
    """
    if path not in ("q", "k", "v"):
        raise ValueError(f"path must be 'q', 'k' or 'v', got {path!r}")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if int(layer) >= reader:
            raise ValueError(f"layer {reader} cannot read head {(layer, head)}: it must come "
                             "from an earlier layer")
        by_layer.setdefault(int(layer), []).append(int(head))
    d_head = hf_model.config.head_dim
    block = hf_model.model.layers[reader]
    norm = block.input_layernorm
    writes: dict[int, torch.Tensor] = {}
    seen: dict[str, torch.Tensor] = {}

    def keep_writes(layer: int, indices: list[int]) -> Callable[..., None]:
        weight = hf_model.model.layers[layer].self_attn.o_proj.weight  # [d_model, H * d_head]

        def hook(module: Any, args: tuple[Any, ...]) -> None:
            writes[layer] = sum(
                args[0][..., i * d_head:(i + 1) * d_head] @ weight[:, i * d_head:(i + 1) * d_head].T
                for i in indices)
        return hook

    def keep_resid(module: Any, args: tuple[Any, ...]) -> None:
        seen["resid"] = args[0]

    def replace(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = (seen["resid"] - sum(writes.values())).float()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return ((norm.weight * normed).to(args[0].dtype), *args[1:])

    handles = []
    try:
        for layer, indices in by_layer.items():
            o_proj = hf_model.model.layers[layer].self_attn.o_proj
            handles.append(o_proj.register_forward_pre_hook(keep_writes(layer, indices)))
        handles.append(norm.register_forward_pre_hook(keep_resid))
        projection = getattr(block.self_attn, f"{path}_proj")
        handles.append(projection.register_forward_pre_hook(replace))
        yield
    finally:
        for handle in handles:
            handle.remove()


def eval_sequences(tokenizer: Any, n: int = 64, length: int = 30, seed: int = 123) -> torch.Tensor:
    """[n, 1 + 2 length] held-out ``BOS + r + r`` sequences for the causal test."""
    return repeated_sequences(token_pool(tokenizer), int(tokenizer.bos_token_id), n, length,
                              torch.Generator().manual_seed(seed))


def in_context_drop(hf_model: Any, tokens: torch.Tensor, ablate: Iterable[Head] = ()) -> float:
    """First-copy loss minus second-copy loss (:func:`half_losses`), with ``ablate`` zeroed."""
    with torch.no_grad(), heads_zeroed(hf_model, ablate):
        first, second = half_losses(hf_model, tokens)
    return first - second


def causal_head_effects(hf_model: Any, tokens: torch.Tensor,
                        head_sets: Iterable[Iterable[Head]] | None = None
                        ) -> dict[tuple[Head, ...], float]:
    """The fraction of the in-context loss drop each head set's ablation removes.

    ``removed(S) = 1 - drop(S ablated) / drop(nothing ablated)``: 1 means ablating ``S``
    leaves no in-context learning, 0 no effect. ``head_sets`` default: every single head.
    """
    base = in_context_drop(hf_model, tokens)
    if head_sets is None:
        head_sets = [[(layer, head)] for layer in range(hf_model.config.num_hidden_layers)
                     for head in range(hf_model.config.num_attention_heads)]
    effects = {}
    for heads in head_sets:
        key = tuple(sorted((int(layer), int(head)) for layer, head in heads))
        effects[key] = 1.0 - in_context_drop(hf_model, tokens, key) / base
    return effects


def path_effects(hf_model: Any, tokens: torch.Tensor,
                 head_sets: Iterable[Iterable[Head]], reader: int,
                 paths: Iterable[str] = ("q", "k", "v"),
                 ) -> dict[tuple[tuple[Head, ...], str], float]:
    """The fraction of the in-context loss drop removed when each head set is taken out of
    one input (``q``, ``k`` or ``v``) of layer ``reader`` only
    (:func:`heads_removed_from_path`), keyed by ``(sorted heads, path)``."""
    base = in_context_drop(hf_model, tokens)
    effects = {}
    for heads in head_sets:
        key = tuple(sorted((int(layer), int(head)) for layer, head in heads))
        for path in paths:
            with torch.no_grad(), heads_removed_from_path(hf_model, key, reader, path):
                first, second = half_losses(hf_model, tokens)
            effects[(key, path)] = 1.0 - (first - second) / base
    return effects


def smallest_removing_set(candidates: Iterable[Head],
                          removed: Callable[[tuple[Head, ...]], float],
                          share: float) -> tuple[tuple[Head, ...], list[float]]:
    """Greedily the smallest set of ``candidates`` whose ablation removes ``>= share`` of
    the in-context loss drop: start empty, add the head whose addition removes the most,
    stop once ``removed(set) >= share`` (or every candidate is in).

    Returns ``(heads sorted, removed after each addition)``.
    """
    left = [tuple(head) for head in candidates]
    chosen: list[Head] = []
    trajectory: list[float] = []
    while left and (not trajectory or trajectory[-1] < share):
        gains = {head: removed(tuple(sorted([*chosen, head]))) for head in left}
        best = max(gains, key=lambda head: gains[head])
        chosen.append(best)
        left.remove(best)
        trajectory.append(gains[best])
    return tuple(sorted(chosen)), trajectory


def identify_heads(hf_model: Any, tokens: torch.Tensor, share: float = 0.8) -> dict[str, Any]:
    """The causal test that names the known heads of an attention-only 2-layer model.

    - induction heads: the smallest set of last-layer heads whose zero-ablation removes
      ``>= share`` of the in-context loss drop (:func:`smallest_removing_set` over
      :func:`causal_head_effects`);
    - previous-token heads: the smallest set of layer-0 heads whose removal from the
      last layer's *keys* only removes ``>= share`` of it (:func:`heads_removed_from_path`);
    - also measured: every head's zero-ablation effect, and each layer-0 head's effect through
      each of the last layer's q, k and v inputs.

    Shares no code with the scorers: it reads only losses of the plain HF model.
    """
    last = hf_model.config.num_hidden_layers - 1
    n_heads = hf_model.config.num_attention_heads
    first, second = half_losses(hf_model, tokens)
    singles = causal_head_effects(hf_model, tokens)

    def ablated(heads: tuple[Head, ...]) -> float:
        return causal_head_effects(hf_model, tokens, [heads])[heads]

    def key_removed(heads: tuple[Head, ...]) -> float:
        return path_effects(hf_model, tokens, [heads], last, paths=("k",))[(heads, "k")]

    induction, induction_steps = smallest_removing_set(
        [(last, h) for h in range(n_heads)], ablated, share)
    previous, previous_steps = smallest_removing_set(
        [(0, h) for h in range(n_heads)], key_removed, share)
    paths = path_effects(hf_model, tokens, [[(0, h)] for h in range(n_heads)], last)
    return {
        "first_half_loss": first, "second_half_loss": second,
        "single_head_removed": {heads[0]: value for heads, value in singles.items()},
        "induction_heads": induction, "induction_removed": induction_steps[-1],
        "induction_steps": induction_steps,
        "previous_token_heads": previous, "previous_token_key_removed": previous_steps[-1],
        "previous_token_steps": previous_steps,
        "layer0_path_removed": {(heads[0], path): value
                                for (heads, path), value in paths.items()},
    }


def save_weights(hf_model: Any, path: str) -> None:
    """Write the model's state dict (fp32) to a safetensors file at ``path``."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().contiguous().float()
             for name, tensor in hf_model.state_dict().items()}
    save_file(state, path)


def trained_induction_hf_model() -> tuple[Any, Any]:
    """The shipped trained model, unwrapped: ``(hf_model, tokenizer)``, fp32, eval mode.

    Loads ``headprobe/resources/trained_induction.safetensors``; no network, no training.
    """
    from safetensors.torch import load

    from headprobe.paths import resource_path

    hf_model, tokenizer = new_induction_hf_model(0)
    state = load(resource_path(WEIGHTS_FILE).read_bytes())
    hf_model.load_state_dict(state, strict=True)
    return _attention_only(hf_model).eval(), tokenizer


def trained_induction_model(device: str | torch.device | None = "cpu",
                            dtype: torch.dtype = torch.float32) -> tuple[Any, ModelSpec]:
    """The shipped trained model wrapped in a bridge: ``(bridge, spec)`` (offline)."""
    from headprobe.models import wrap_hf_model

    hf_model, tokenizer = trained_induction_hf_model()
    return wrap_hf_model(hf_model, tokenizer, name=TRAINED_MODEL_ID, hf_name=TRAINED_MODEL_ID,
                         device=device, dtype=dtype)


# The causal test on the shipped weights (identify_heads(model, eval_sequences(tokenizer)),
# 64 held-out sequences of L = 30; recipes/train_induction_model.py prints them): first-copy
# loss 4.642, second-copy loss 0.074 (the in-context loss drop: 4.568 nats).

INDUCTION_HEADS: frozenset[Head] = frozenset({(1, 1), (1, 2), (1, 3)})
"""The induction heads: zero-ablating these three layer-1 heads together removes 100.1% of
the in-context loss drop (greedy: L1H3 alone 34.9%, + L1H1 70.9%, + L1H2 100.1%). L1H0 is
not one: alone it removes 1.1%, and with the other three ablated it leaves none of the
drop, although its attention follows the induction pattern (scorer score ~0.6)."""

PREVIOUS_TOKEN_HEADS: frozenset[Head] = frozenset({(0, 0), (0, 3)})
"""The previous-token heads the induction heads read through their keys (K-composition):
taking L0H0 and L0H3 out of the layer-1 keys only removes 102.5% of the drop (L0H0 alone
49.8%, L0H3 alone 23.0%); through the layer-1 queries and values they remove < 2%."""

CURRENT_TOKEN_HEADS: frozenset[Head] = frozenset({(0, 2)})
"""L0H2 attends to its own position (~0.88 of its attention) and feeds the layer-1 queries
and values: out of the layer-1 queries only it removes 94.7% of the drop, out of the values
85.7%, out of the keys -19.1%. Causally essential, but neither a previous-token nor an
induction head (a negative for both scorers)."""

SINGLE_HEAD_REMOVED: Mapping[Head, float] = {
    (0, 0): 0.343, (0, 1): -0.092, (0, 2): 0.975, (0, 3): 0.074,
    (1, 0): 0.011, (1, 1): -0.103, (1, 2): 0.011, (1, 3): 0.349,
}
"""Share of the in-context loss drop removed by zero-ablating each head alone (3 decimals)."""

KEY_PATH_REMOVED: Mapping[Head, float] = {(0, 0): 0.498, (0, 1): -0.006, (0, 2): -0.191,
                                          (0, 3): 0.230}
"""Share removed by taking each layer-0 head out of the layer-1 keys only (3 decimals)."""

FIRST_HALF_LOSS = 4.642
SECOND_HALF_LOSS = 0.074
TRAINING_SECONDS = 96.5
"""Wall time of the shipped run (1500 steps, one torch thread, nice 10, on a shared 2-core
CPU; the weights are bit-identical to an earlier run of the same recipe)."""
