"""KV-cached generation through the bridge's Hugging Face modules, with headprobe's hooks active.

:func:`generate` runs prompts in padded batches: one *prefill* forward over the prompts
(step 0), then one forward per generated token (step ``k >= 1`` feeds the ``k``-th generated
token) that computes only the newest column against the keys and values kept in a
``transformers.DynamicCache``. The bridge's hooks live inside the HF model, so interventions
and reducers see [B, T, ...] activations at the prefill and [B, 1, ...] ones at each decode
step (``hook_pattern``: [B, H, 1, T_k]).

Route. For every architecture with ``layer_runner=True`` in :mod:`headprobe.arch` (llama
family, Gemma 3) each cached step runs through the layer runner
(:func:`headprobe.runtime.layers.embed`, then
:func:`headprobe.runtime.layers.run_from_layer` from layer 0 with ``cache=``), the same route
as the fast scans, reading out the logits of one column per row only. Architectures without
it (GPT-2: learned absolute positions, no rotary table) call the HF model
(``model.original_model(...)``) directly, with the same position-built masks passed as its
4-D ``attention_mask``. The ``use_cache=False`` reference route is always a plain full HF
forward over prompt + generated tokens, independent of both.

Cost per prompt of ``T`` tokens: the prefill is one forward over ``T`` columns (attention
O(T^2)); each decode step is one column attending to the ``T + k`` cached keys (O(T) per
step), so ``n`` new tokens cost O(T^2 + n (T + n)) attention instead of the O(n (T + n)^2)
of recomputing the sequence every step (``use_cache=False``, kept as the reference route).
Every layer keeps all keys (sliding-window layers too, masked to their window), so cache
memory is O(L (T + n)) per row.

Positions. Each row tracks the absolute position of its next token (its prompt length, then
``+ 1`` per step) and the absolute position and realness of every cached key column. The
attention masks are built from those positions, not from columns
(:func:`headprobe.runtime.layers.position_masks`: key visible iff real, ``pos_k <= pos_q``,
and on a sliding-window layer ``pos_q - pos_k < window``), so left and right padding give the
same tokens (right padding leaves pad columns between a prompt and its continuation; they
stay masked). Every forward runs inside
:func:`headprobe.runtime.positions.forward_positions`, so interventions address absolute
positions in both routes.

Observers. ``generate(..., observers=[...])`` takes :class:`StepObserver` objects (e.g.
:class:`headprobe.runtime.observer.AttentionObserver`): each gets hooks attached with the
batch's others (after the user's ``hooks`` and the reducers, so it sees their edits; removed
with them, also on error) and, after every step's token is chosen, the batch's
:class:`DecodeStep` (cache, key positions, newest query column, chosen tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from headprobe.arch import ModelSpec
from headprobe.errors import ImageGenerationError
from headprobe.images import image_token_id
from headprobe.inputs import Batch, Encoded, PaddingSide, Prompts, encode_prompts, iter_batches
from headprobe.models import describe_model
from headprobe.runtime.hf_compat import bridge_attention_cache, cache_kwarg, output_cache
from headprobe.runtime.hooks import Hook, attached, model_device, model_dtype
from headprobe.runtime.image_features import BatchImageFeatures
from headprobe.runtime.layers import embed, position_masks, run_from_layer
from headprobe.runtime.positions import forward_positions
from headprobe.runtime.sdpa import fused_attention
from headprobe.runtime.stream import ReduceContext, Reducer, call_reducer

__all__ = [  # position_masks: re-exported
    "DecodeStep", "Generation", "StepObserver", "generate", "position_masks"]


@dataclass
class Generation:
    """What :func:`generate` returns.

    Attributes:
        tokens: [N, max_new_tokens] generated ids per prompt (in prompt order); after a stop
            at EOS the rest of the row holds the pad id.
        lengths: [N] number of generated tokens kept per prompt (the EOS included).
        texts: the kept tokens of each prompt decoded (special tokens skipped).
        prompt_lengths: [N] prompt token counts.
        logits: [N, max_new_tokens, V] float32 logits each token was chosen from (before
            temperature / top-k / top-p; zeros after a stop), when ``keep_logits``.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    texts: list[str]
    prompt_lengths: torch.Tensor
    logits: torch.Tensor | None = None


@dataclass
class DecodeStep:
    """One batch's decode state as observers see it; :func:`generate` updates it in place.

    The fields up to ``cache`` are set *before* each step's forward (so a hook may read them
    while the step runs); ``tokens`` and ``live`` after the step's tokens are chosen, just
    before :meth:`StepObserver.after_step`.

    Attributes:
        batch: the padded batch (``batch.indices``: the prompts' indices).
        step: 0 for the prefill, ``k >= 1`` for the forward of the ``k``-th generated token.
        use_cache: whether the run is KV-cached (``False``: the recomputing reference route,
            whose every step is a full forward over prompt + generated tokens).
        query_positions: [B, T_step] absolute positions of the step's query columns.
        query_column: [B] the column (in ``0..T_step-1``) of each row's newest query, the one
            whose logits choose the next token.
        key_positions, key_real: [B, T_k] absolute position and realness of every key column
            the step's queries attend over (cached columns + the step's own).
        cache: the ``transformers.DynamicCache`` after the step (keys per layer
            [B, H_kv, T_k, d_head], after k norm and rotary), ``None`` when not cached.
        tokens: [B] the token chosen from each row's newest query (CPU).
        live: [B] rows that had not stopped at EOS before this step (CPU bool).
        prefix: ``True`` while a chunked prefill (``generate(prefill_chunk=...)``) runs the
            prompt columns before the step-0 forward; no row's newest query is among them
            (``query_column`` then points at the chunk's last column, and observers skip it).
    """

    batch: Batch
    step: int
    use_cache: bool
    query_positions: torch.Tensor
    query_column: torch.Tensor
    key_positions: torch.Tensor
    key_real: torch.Tensor
    cache: Any = None
    tokens: torch.Tensor | None = None
    live: torch.Tensor | None = None
    prefix: bool = False


class StepObserver(Protocol):
    """Something :func:`generate` shows every decode step (see
    :class:`headprobe.runtime.observer.AttentionObserver`)."""

    def batch_hooks(self, model: Any, spec: ModelSpec, state: DecodeStep) -> Sequence[Hook]:
        """Hooks attached for one batch's steps; ``state`` is updated in place by
        :func:`generate` (read it inside the hooks, never edit it)."""
        ...

    def after_step(self, state: DecodeStep) -> None:
        """Called after each step's tokens are chosen (``state.tokens`` set)."""
        ...


def generate(
    model: Any,
    prompts: Prompts | Sequence[torch.Tensor],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    padding_side: PaddingSide = "left",
    use_cache: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_at_eos: bool = False,
    eos_token_id: int | None = None,
    hooks: Sequence[Hook] = (),
    reducers: dict[str, Reducer] | None = None,
    layers: Sequence[int] | None = None,
    keep_logits: bool = False,
    progress: bool = False,
    desc: str = "generate",
    observers: Sequence[StepObserver] = (),
    prefill_chunk: int | None = None,
) -> Generation:
    """Generate ``max_new_tokens`` tokens after each prompt (greedy unless ``do_sample``).

    Args:
        model: a TransformerLens bridge over a causal HF model (eager attention).
        prompts: strings (tokenized with BOS) or token lists (1-D tensors / int sequences).
        max_new_tokens: tokens generated per prompt (``>= 1``).
        batch_size, padding_side: batching (left padding is the natural one; right padding
            gives the same tokens).
        use_cache: ``True``: KV-cached decoding. ``False``: the reference route that
            recomputes the whole sequence (prompt + generated so far) every step.
        do_sample: sample instead of taking the argmax, after ``temperature``, ``top_k``
            and ``top_p`` (HF's logits warpers); each prompt draws from its own local
            ``torch.Generator`` seeded from ``seed`` and the prompt index, so a prompt's
            sample does not depend on its batch (the global RNG is never used).
        stop_at_eos: a row stops after emitting ``eos_token_id`` (default: the tokenizer's);
            the batch stops when every row has.
        hooks: ``(hook name, fn)`` forward hooks active during every step (e.g. an
            intervention's hooks; ``with intervene(...)`` around the call works too).
        reducers: ``{hook kind: reducer}`` (kinds as in :class:`~headprobe.arch.HookNames`),
            called at every step and hooked layer with the activation and
            ``ReduceContext(batch, layer, step, positions)``: ``step`` 0 is the prefill,
            ``k >= 1`` the forward of the ``k``-th generated token; ``positions`` [B, T_step]
            the absolute positions of the activation's columns. Reducers must not edit it.
        layers: layers the reducers hook (default: all).
        keep_logits: also return the per-step logits ([N, max_new_tokens, V], CPU float32).
        progress: a tqdm bar over batches x steps.
        observers: :class:`StepObserver` objects shown every step of every batch (e.g.
            :class:`headprobe.runtime.observer.AttentionObserver`: each (layer, head)'s
            attention row of the newest query); their hooks are removed with the others.
        prefill_chunk: KV-cached route only: run the prompt columns before the earliest
            row's last prompt token in chunks of this many columns (each attending to the
            cached ones), then step 0 over the rest (with left padding: the last prompt
            token alone, the layout of Wu et al.'s reference). Eager attention over a chunk
            holds [B, H, chunk, T] scores instead of [B, H, T, T], so long prompts cost
            O(chunk * T) attention memory. When no hook listens inside the attention
            (pattern, scores, rotary q/k; ``hook_q``/``hook_k``/``hook_v``/``hook_z`` may) the
            chunks run PyTorch's fused ``sdpa`` kernel instead of the bridge's eager
            attention (:mod:`headprobe.runtime.sdpa`; observers attach after the chunks).
            Hooks see the chunks' columns (with their absolute positions published); not
            together with ``reducers``.

    Returns:
        :class:`Generation`.

    Image prompts (LLaVA-style models): the prefill merges the projected vision features
    into the image-token rows of the embeddings, as the HF model does
    (:mod:`headprobe.runtime.image_features`); the ``use_cache=False`` route passes the
    pixel values to the HF forward instead.

    Raises:
        ImageGenerationError: an image prompt of a model whose image prompts the decode step
            cannot run (no layer runner, e.g. Qwen2-VL-style 3-D rotary positions).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prefill_chunk is not None:
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 columns, got {prefill_chunk}")
        if reducers:
            raise ValueError("prefill_chunk splits step 0 into several forwards, which "
                             "reducers would see as separate step-0 calls; pass one or the "
                             "other")
        if not use_cache:
            raise ValueError("prefill_chunk needs the KV-cached route (use_cache=True)")
    spec = describe_model(model)
    encoded = encode_prompts(model, prompts, spec)
    token_lists = [item.ids for item in encoded]
    with_images = _check_image_prompts(spec, encoded)
    if any(len(ids) + max_new_tokens > spec.n_ctx for ids in token_lists):
        raise ValueError(f"a prompt plus {max_new_tokens} new tokens exceeds the context of "
                         f"{spec.n_ctx} tokens; generate fewer tokens")
    pad = spec.pad_token_id if spec.pad_token_id is not None else 0
    if stop_at_eos and eos_token_id is None:
        eos_token_id = getattr(model.tokenizer, "eos_token_id", None)
        if eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id: the tokenizer has none")
    chooser = _Chooser(do_sample, temperature, top_k, top_p, seed)
    layer_list = spec.check_layers(list(layers) if layers is not None else None)
    device = model_device(model)
    n = len(token_lists)
    out_tokens = torch.full((n, max_new_tokens), pad, dtype=torch.long)
    out_lengths = torch.zeros(n, dtype=torch.long)
    out_logits: torch.Tensor | None = None
    session = object()
    n_batches = -(-n // batch_size)
    bar = tqdm(total=n_batches * max_new_tokens, desc=desc, disable=not progress, leave=False)
    try:
        for batch in iter_batches(encoded if with_images else token_lists, batch_size,
                                  pad_token_id=pad, padding_side=padding_side, device=device):
            run = _BatchRun(model, spec, batch, session, use_cache, padding_side, pad,
                            prefill_chunk)
            if with_images and "pixel_values" in batch.extra:
                run.images = BatchImageFeatures(model, batch, image_token_id(model),
                                                run.dtype)
            state = {"step": 0}
            hook_list = [*hooks, *_reducer_hooks(spec, batch, reducers or {}, layer_list,
                                                 run, state)]
            observer_hooks: list[Hook] = []
            for observer in observers:
                observer_hooks.extend(observer.batch_hooks(model, spec, run.state))
            rows = batch.indices.cpu()
            finished = torch.zeros(batch.size, dtype=torch.bool)
            # observers attach after the chunked prefill (they observe no prompt column
            # before the last), so it may run the fused attention when nothing else listens
            with torch.no_grad(), attached(model, hook_list):
                run.prefill_prefix()
                # the steps run sdpa in every layer nobody listens to inside the attention
                # (an observer's layers, a pattern edit's, stay eager); the reference route
                # (use_cache=False) stays eager throughout
                with attached(model, observer_hooks), fused_attention(
                        model, spec, enabled=use_cache and run.runner):
                    for step in range(max_new_tokens):
                        state["step"] = step
                        logits = run.forward(step).float()  # [B, V]
                        chosen = chooser(logits, rows, run.sequences).cpu()
                        live = ~finished
                        if observers:
                            run.state.cache = run.cache
                            run.state.tokens, run.state.live = chosen, live.clone()
                            for observer in observers:
                                observer.after_step(run.state)
                        out_tokens[rows[live], step] = chosen[live]
                        out_lengths[rows[live]] += 1
                        if keep_logits:
                            if out_logits is None:
                                out_logits = torch.zeros(n, max_new_tokens, logits.shape[-1])
                            out_logits[rows[live], step] = logits.cpu()[live]
                        run.append(chosen)
                        bar.update(1)
                        if stop_at_eos:
                            finished |= chosen == eos_token_id
                            if bool(finished.all()):
                                bar.update(max_new_tokens - step - 1)
                                break
    finally:
        bar.close()
    texts = [model.tokenizer.decode(out_tokens[i, : int(out_lengths[i])].tolist(),
                                    skip_special_tokens=True) for i in range(n)]
    return Generation(out_tokens, out_lengths, texts,
                      torch.tensor([len(ids) for ids in token_lists]), out_logits)


class _Chooser:
    """Greedy argmax, or sampling with HF's warpers and one local generator per prompt."""

    def __init__(self, do_sample: bool, temperature: float, top_k: int | None,
                 top_p: float | None, seed: int) -> None:
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.do_sample = do_sample
        self.seed = seed
        self.generators: dict[int, torch.Generator] = {}
        self.warpers = LogitsProcessorList()
        if do_sample:
            if temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_k is not None:
                self.warpers.append(TopKLogitsWarper(top_k))
            if top_p is not None and top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor,
                 sequences: torch.Tensor) -> torch.Tensor:
        """[B, V] logits -> [B] token ids (``sequences`` [B, S]: the ids so far)."""
        if not self.do_sample:
            return logits.argmax(-1)
        scores = self.warpers(sequences, logits)
        probs = torch.softmax(scores, -1).cpu()
        picks = []
        for row, index in enumerate(rows.tolist()):
            generator = self.generators.get(index)
            if generator is None:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
                self.generators[index] = generator
            picks.append(torch.multinomial(probs[row], 1, generator=generator))
        return torch.cat(picks).to(logits.device)


def _reducer_hooks(spec: ModelSpec, batch: Batch, reducers: dict[str, Reducer],
                   layers: list[int], run: _BatchRun, state: dict[str, int]) -> list[Hook]:
    hooks: list[Hook] = []
    for kind, reducer in reducers.items():
        for layer in layers:

            def hook(activation: torch.Tensor, hook: Any, reducer: Reducer = reducer,
                     layer: int = layer) -> None:
                context = ReduceContext(batch, layer, state["step"], run.query_positions)
                call_reducer(reducer, activation, context, getattr(hook, "name", "?"))

            hooks.append((spec.hooks.at(kind, layer), hook))
    return hooks


class _BatchRun:
    """One batch's generation state: cached (``DynamicCache``; through the layer runner or
    the HF model, see the module docstring) or recomputed each step."""

    def __init__(self, model: Any, spec: ModelSpec, batch: Batch, session: object,
                 use_cache: bool, padding_side: PaddingSide, pad: int,
                 prefill_chunk: int | None = None) -> None:
        from transformers import DynamicCache

        self.model, self.spec, self.batch = model, spec, batch
        self.session, self.use_cache = session, use_cache
        self.prefill_chunk = prefill_chunk
        self.prefilled = 0  # prompt columns cached by prefill_prefix before step 0
        self.fused_prefill = False
        self.padding_side, self.pad = padding_side, pad
        self.dtype = model_dtype(model)
        device = batch.tokens.device
        # ids of every row so far, prompt then generated, without padding: list of [S_b]
        self.ids = [batch.tokens[b, batch.start[b]:batch.start[b] + batch.lengths[b]]
                     for b in range(batch.size)]
        self.next_position = batch.lengths.clone().to(device)  # [B]
        self.key_positions = batch.position_ids.clone()  # [B, T_k] of the cached columns
        self.key_real = batch.attention_mask.clone()
        self.last = batch.tokens[:, :1]
        self.images: BatchImageFeatures | None = None  # image prompts: merged at the prefill
        self.cache = DynamicCache() if use_cache else None  # all layers keep every key
        # KV-cached steps through the layer runner where the architecture has one
        self.runner = spec.facts.layer_runner and spec.causal
        self.query_positions = batch.position_ids
        self.state = DecodeStep(batch, 0, use_cache, batch.position_ids, batch.last,
                                batch.position_ids, batch.attention_mask)

    def _publish(self, step: int, query: torch.Tensor, column: torch.Tensor,
                 key_positions: torch.Tensor, key_real: torch.Tensor,
                 prefix: bool = False) -> None:
        """Update :attr:`state` before a step's forward (see :class:`DecodeStep`)."""
        state = self.state
        state.step, state.query_positions, state.query_column = step, query, column
        state.key_positions, state.key_real = key_positions, key_real
        state.tokens = state.live = None
        state.prefix = prefix

    @property
    def sequences(self) -> torch.Tensor:
        """[B, S] ids so far, right-padded (only read by the sampling warpers)."""
        return torch.nn.utils.rnn.pad_sequence(self.ids, batch_first=True,
                                               padding_value=self.pad)

    def append(self, chosen: torch.Tensor) -> None:
        """Record each row's chosen token ([B])."""
        chosen = chosen.to(self.batch.tokens.device)
        self.ids = [torch.cat([ids, chosen[b:b + 1]]) for b, ids in enumerate(self.ids)]
        self.last = chosen[:, None]

    def forward(self, step: int) -> torch.Tensor:
        """Run step ``step``; returns [B, V] next-token logits."""
        batch = self.batch
        if not self.use_cache:
            return self._recompute(step)
        if step > 0:
            query = (self.next_position + step - 1)[:, None]
            self.key_positions = torch.cat([self.key_positions, query], 1)
            self.key_real = torch.cat([self.key_real, torch.ones_like(query, dtype=torch.bool)],
                                      1)
            readout = torch.full((batch.size,), self.key_positions.shape[1] - 1,
                                 dtype=torch.long, device=query.device)
            return self._cached(step, self.last, self.key_positions.shape[1] - 1, readout)
        return self._cached(0, batch.tokens[:, self.prefilled:], self.prefilled, batch.last)

    def prefill_prefix(self) -> None:
        """With ``prefill_chunk``: cache the prompt columns before every row's last prompt
        token, in chunks, before step 0 (which then runs the rest). Every layer whose
        attention no hook listens to inside (:func:`~headprobe.runtime.sdpa.fused_attention`)
        runs the fused ``sdpa`` attention (no [B, H, chunk, T] scores held);
        ``fused_prefill`` says whether all layers did."""
        batch = self.batch
        if self.prefill_chunk is None or not self.use_cache:
            return
        first = int(batch.last.min())
        with fused_attention(self.model, self.spec, enabled=first > 0 and self.runner) as fused:
            for start in range(0, first, self.prefill_chunk):
                stop = min(start + self.prefill_chunk, first)
                column = torch.full((batch.size,), stop - 1, dtype=torch.long,
                                    device=batch.tokens.device)
                self._cached(0, batch.tokens[:, start:stop], start, column, prefix=True)
        self.prefilled = first
        self.fused_prefill = len(fused) == self.spec.n_layers

    def _cached(self, step: int, ids: torch.Tensor, start: int, readout: torch.Tensor,
                prefix: bool = False) -> torch.Tensor:
        """One cached forward of the key columns ``start..start + S - 1`` (``ids`` [B, S]),
        attending to the cached ones before them; [B, V] logits at the ``readout`` columns
        (absolute column indices, ``>= start``)."""
        batch = self.batch
        stop = start + ids.shape[1]
        key_positions, key_real = self.key_positions[:, :stop], self.key_real[:, :stop]
        query = key_positions[:, start:]
        self.query_positions = query
        self._publish(step, query, readout - start, key_positions, key_real, prefix)
        published = {"key": key_positions, "rows": batch.indices, "session": self.session}
        if self.runner:
            with forward_positions(query, **published):
                resid = embed(self.model, ids)  # hook_embed sees the step's positions
            if self.images is not None:  # image prompts: the vision features, as HF merges
                resid = self.images.merge(resid, start)
            return run_from_layer(self.model, resid, 0, key_real, key_positions,
                                  cache=self.cache, positions=readout, rows=batch.indices,
                                  session=self.session)
        masks = position_masks(self.spec, query, key_real[:, start:], key_positions,
                               key_real, self.dtype)
        with forward_positions(query, **published), bridge_attention_cache(self.model):
            out = self.model.original_model(input_ids=ids, attention_mask=masks,
                                            position_ids=query, use_cache=True,
                                            **{cache_kwarg(): self.cache})
        self.cache = output_cache(out)
        return out.logits[torch.arange(batch.size), readout - start]

    def _recompute(self, step: int) -> torch.Tensor:
        """The reference route: a plain full HF forward over prompt + generated so far."""
        batch = self.batch
        full = next(iter_batches(self.ids, len(self.ids), pad_token_id=self.pad,
                                 padding_side=self.padding_side, device=batch.tokens.device))
        self.query_positions = full.position_ids
        self._publish(step, full.position_ids, full.last, full.position_ids,
                      full.attention_mask)
        with forward_positions(full.position_ids, rows=batch.indices, session=self.session):
            out = self.model.original_model(
                input_ids=full.tokens, attention_mask=full.attention_mask.long(),
                position_ids=full.position_ids, use_cache=False, **batch.extra)
        return out.logits[torch.arange(full.size), full.last]


def _check_image_prompts(spec: ModelSpec, encoded: list[Encoded]) -> bool:
    """Whether any prompt has extra model inputs (an image prompt); raises
    :class:`ImageGenerationError` when the model's image prompts cannot be generated from:
    only LLaVA-style models, whose language model takes 1-D positions and runs on the layer
    runner, can (Qwen2-VL-style 3-D rotary positions are not built)."""
    with_images = [index for index, item in enumerate(encoded) if item.extra]
    if with_images and not (spec.facts.vision_language and spec.facts.layer_runner):
        raise ImageGenerationError(
            f"prompt {with_images[0]} is an image prompt, and headprobe cannot generate from "
            f"image prompts of a {spec.model_type!r} model: the decode step runs the layers "
            "from token embeddings and would need positions it does not build (e.g. "
            "Qwen2-VL's 3-D multimodal rotary positions). Judge it with the 'next_token' "
            "judge, or give a text-only prompt")
    return bool(with_images)
