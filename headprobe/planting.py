"""Planted models: heads of chosen roles written by hand at chosen (layer, head) among random
heads, in a small Llama- or Gemma-3-style model built from a config (ground truth for the
scorers, issue 19).

One builder, shared by the tests and ``headprobe validate``::

    planted = planted_model("llama", {(0, 0): "previous_token", (1, 6): "induction"})
    planted.bridge, planted.spec, planted.known("induction")  # {Head(1, 6)}

**Roles** are declared by head types: ``HeadType.planters = {role: "module:function"}``
(:mod:`headprobe.registry`), each function ``plant(planted, head, **options)`` writing that
head's q/k/v/o weights; this module knows no head type by name. It adds one generic role,
``answer`` (:func:`plant_answer`: a head that pushes one answer token, for direct logit
attribution).

**Models** (:data:`KINDS`), both with the character tokenizer of
:func:`headprobe.tiny.char_tokenizer` and wrapped in a bridge by
:func:`headprobe.models.wrap_hf_model` as the tiny models are:

- ``llama``: RMSNorm, rotary (base 1e6), grouped-query attention: d_model 256, 4 layers,
  8 query heads over 4 kv heads, d_head 128, MLP width 512;
- ``gemma``: a Gemma-3 text model of the same sizes: q/k RMS norms after the projections,
  sandwich norms (post-attention and post-feed-forward), the embedding scaled by
  sqrt(d_model), untied unembedding; layers 0 and 2 slide (window :data:`SLIDING_WINDOW`),
  1 and 3 are global; rotary base 1e6 on both kinds of layer (the real Gemma 3 uses 1e4 on
  sliding layers; a single base keeps the same slow rotary pairs for content matching).

d_head is 128 (not 32) so that 33 rotary pairs turn by less than 0.4 rad over 256 positions:
a content match (query code . key code) written on those 64 dimensions barely depends on
position, and the 64-dimensional token codes fit them.

**Residual stream.** An :class:`Allocator` splits d_model into named subspaces:
``constant`` (1 dim, value :data:`CONSTANT` at every token: it keeps the RMS of the residual
near 1, so the norms scale every planted signal alike), ``bos`` (1 at the first token),
``anchor`` (Gemma's post-attention norm anchor, always 0 in the residual),
``token`` (the token's code), ``previous`` (the previous token's code, written by
previous-token heads), ``copied`` (a code written by copying heads; the unembedding reads only
this subspace: ``W_U[t] = UNEMBED * code(t)``), ``spare`` dims that planters may claim
(:meth:`Allocator.claim`), and ``noise``: the rest. Every token but BOS has a unit *code*
(:func:`spread_codes`: unit vectors in 64 dimensions pushed apart, |cos| below about 0.3);
with ``needle_alphabet`` the alphabet's tokens get one-hot codes in a block of their own, so
heads can read the alphabet and the other tokens separately (copy heads that split the
vocabulary: induction heads copy the other tokens, retrieval heads the needle alphabet).

**Random heads.** Every head not planted keeps its random weights (the tiny models' init:
N(0, 0.08), q, k and v reading the whole residual) but its output projection writes only into
``noise`` (N(0, :data:`NOISE_STD`)), which no planted head reads; MLPs likewise (random
gate/up, down projection into ``noise`` only). Gemma's post-attention norm would rescale a
layer's summed head outputs to a fixed RMS, making every planted write depend on the others
and on the noise; so its attention has biases (``attention_bias``, all zero but the output
bias's ``anchor`` dimension, :data:`CONSTANT`), the anchor dominates the RMS, and the norm's
gain is 0 on the anchor and 1 elsewhere: the planted writes pass almost unscaled. The
post-feed-forward norm (the MLP writes only noise) has gain :data:`NOISE_GAIN`. A planted head's
kv head is written by its planter, so the other query head of that kv group attends with
random queries over planted keys and values (still writing noise); two planted heads may
not share a kv group.

**Scales.** Planters write unit-length query and key maps and call :func:`write_qk`, which
scales them so that a perfect match has logit :data:`LOGIT_SCALE` (48): on ``llama`` by
multiplying the query, on ``gemma`` through the q-norm gain, which every head of a layer
shares (Gemma's q/k norms give each query and key the length sqrt(d_head) times the norm's
weight, so the norm, not the projection, carries the scale).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from headprobe import registry
from headprobe.arch import ModelSpec
from headprobe.errors import PlantingError, UnknownNameError
from headprobe.types import Head

Kind = Literal["llama", "gemma"]
KINDS: tuple[str, ...] = ("llama", "gemma")

D_MODEL = 256
N_LAYERS = 4
N_HEADS = 8
N_KV_HEADS = 4
D_HEAD = 128
D_MLP = 512
ROPE_THETA = 1_000_000.0
SLIDING_WINDOW = 128
GEMMA_LAYER_TYPES = ("sliding_attention", "full_attention", "sliding_attention",
                     "full_attention")
CODE_DIM = 64  # token codes; also the number of slow rotary dimensions content heads use
SPARE_DIMS = 16
CONSTANT = 16.0  # value of the constant dimension (sqrt(d_model): the residual's RMS ~ 1)
UNEMBED = 10.0  # W_U[t] = UNEMBED * code(t) on the copied subspace
LOGIT_SCALE = 48.0  # attention logit of a perfect match
NOISE_STD = 0.005  # random heads' and MLPs' output weights into the noise subspace
NOISE_GAIN = 0.02  # Gemma: sandwich-norm gain of the noise dimensions
MAX_POSITIONS = 512
GENERIC_ROLES: dict[str, str] = {"answer": "headprobe.planting:plant_answer"}


@dataclass(frozen=True)
class Subspace:
    """Dimensions ``start .. start + size - 1`` of the residual stream, named ``name``."""

    name: str
    start: int
    size: int

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + self.size)

    def dim(self, index: int = 0) -> int:
        """The residual dimension of the subspace's ``index``-th coordinate."""
        if not 0 <= index < self.size:
            raise IndexError(f"subspace {self.name!r} has {self.size} dims, asked for {index}")
        return self.start + index


class Allocator:
    """Named subspaces of a d_model residual stream, laid out in the order given.

    ``layout`` ``{name: size}`` is placed first, then ``spare`` dims that :meth:`claim` hands
    out later (a planter's own subspace, e.g. a refusal direction), then ``noise``: the rest,
    where random heads and MLPs write.
    """

    def __init__(self, d_model: int, layout: Mapping[str, int], spare: int) -> None:
        self.d_model = d_model
        self._spaces: dict[str, Subspace] = {}
        start = 0
        for name, size in layout.items():
            self._spaces[name] = Subspace(name, start, size)
            start += size
        self._spare = Subspace("spare", start, spare)
        self._next_spare = start
        start += spare
        if start >= d_model:
            raise PlantingError(f"the residual layout needs {start} dims but d_model is "
                                f"{d_model}: use fewer or smaller subspaces")
        self.noise = Subspace("noise", start, d_model - start)

    def __getitem__(self, name: str) -> Subspace:
        if name == "noise":
            return self.noise
        if name not in self._spaces:
            raise UnknownNameError(registry.unknown_name_message("subspace", name,
                                                                 [*self._spaces, "noise"]))
        return self._spaces[name]

    def __contains__(self, name: str) -> bool:
        return name in self._spaces or name == "noise"

    def claim(self, name: str, size: int = 1) -> Subspace:
        """A new subspace of ``size`` spare dims named ``name``; the same subspace again when
        ``name`` was claimed with that size before (so two heads of a role share it)."""
        if name in self._spaces:
            space = self._spaces[name]
            if space.size != size:
                raise PlantingError(f"subspace {name!r} was claimed with {space.size} dims, "
                                    f"now with {size}: claim it with one size")
            return space
        end = self._spare.start + self._spare.size
        if self._next_spare + size > end:
            raise PlantingError(f"no room for subspace {name!r} ({size} dims): only "
                                f"{end - self._next_spare} spare dims left")
        space = Subspace(name, self._next_spare, size)
        self._next_spare += size
        self._spaces[name] = space
        return space

    @property
    def names(self) -> list[str]:
        """Every subspace name, in residual order (``noise`` last)."""
        return [*self._spaces, "noise"]

    def describe(self) -> dict[str, tuple[int, int]]:
        """``{name: (start, size)}`` of every subspace."""
        out = {name: (s.start, s.size) for name, s in self._spaces.items()}
        out["noise"] = (self.noise.start, self.noise.size)
        return out


@dataclass
class PlantedModel:
    """A planted model: the bridge, its spec and what was written into it.

    Attributes:
        kind: ``"llama"`` or ``"gemma"``.
        bridge: the TransformerBridge (its Hugging Face model is ``bridge.original_model``).
        spec: the model's :class:`~headprobe.arch.ModelSpec`.
        allocator: the residual subspaces.
        roles: ``{head: role}`` of every planted head.
        codes: [vocab, CODE_DIM] the unit code of each token (zero for BOS).
        needle_tokens: token ids of the needle alphabet (one-hot code block), may be empty.
        seed: the seed of the random weights.
        options: ``{role: options}`` the planters were called with.
    """

    kind: str
    bridge: Any
    spec: ModelSpec
    allocator: Allocator
    roles: dict[Head, str]
    codes: torch.Tensor
    needle_tokens: frozenset[int]
    seed: int
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def known(self, role: str) -> frozenset[Head]:
        """The heads planted as ``role`` (empty when none)."""
        return frozenset(head for head, r in self.roles.items() if r == role)

    @property
    def hf(self) -> Any:
        """The Hugging Face model inside the bridge."""
        return self.bridge.original_model

    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    def attention(self, layer: int) -> Any:
        """Layer ``layer``'s attention module (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``)."""
        return self.hf.model.layers[layer].self_attn

    def kv_head(self, head: Head) -> int:
        return head.head // (self.spec.n_heads // self.spec.n_kv_heads)

    def token_id(self, token: str) -> int:
        """The id of one single-character token."""
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise PlantingError(f"{token!r} is not one token of the planted model's tokenizer")
        return int(ids[0])

    def code(self, token: int | str) -> torch.Tensor:
        """[CODE_DIM] the code of a token (id or single character)."""
        index = token if isinstance(token, int) else self.token_id(token)
        return self.codes[index]

    def rotary_frequencies(self, layer: int) -> torch.Tensor:
        """[d_head / 2] rotary angular frequencies of ``layer`` (pair ``p`` is dims
        ``p`` and ``p + d_head / 2``)."""
        rotary = self.hf.model.rotary_emb
        if self.kind == "gemma":
            layer_type = self.hf.config.layer_types[layer]
            return getattr(rotary, f"{layer_type}_inv_freq").float().cpu()
        return rotary.inv_freq.float().cpu()

    def slow_dims(self, layer: int, count: int = CODE_DIM) -> list[int]:
        """``count`` head dimensions of the slowest rotary pairs (both halves of each pair),
        slowest first: content matched there barely depends on position."""
        half = self.spec.d_head // 2
        order = torch.argsort(self.rotary_frequencies(layer))  # slowest first
        dims: list[int] = []
        for pair in order.tolist():
            dims += [pair, pair + half]
            if len(dims) >= count:
                break
        return dims[:count]

    def residual_value(self, name: str) -> float:
        """The value a subspace coordinate of 1 in the embedding has after the pre-attention
        norm (the constant dimension: :data:`CONSTANT`, scaled by the norm's 1 / RMS ~ 1)."""
        return CONSTANT if name == "constant" else 1.0


def spread_codes(count: int, dim: int, seed: int, steps: int = 100) -> torch.Tensor:
    """[count, dim] unit vectors pushed apart: random normal directions (a local
    ``torch.Generator``; the global RNG is not touched), then ``steps`` of projected gradient
    descent on a soft maximum of the squared cosines between distinct vectors (each step
    moves every vector away from the ones it is most aligned with, then renormalises).
    With count <= dim the result is the identity's rows (one-hot codes)."""
    # cached: the planted models of a test session share their codes
    return _spread_codes(count, dim, seed, steps).clone()


@functools.lru_cache(maxsize=8)
def _spread_codes(count: int, dim: int, seed: int, steps: int) -> torch.Tensor:
    if count <= dim:
        return torch.eye(dim)[:count].clone()
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    codes = codes / codes.norm(dim=1, keepdim=True)
    off_diagonal = 1.0 - torch.eye(count, dtype=torch.float64)
    for _ in range(steps):
        cosines = codes @ codes.T * off_diagonal
        weights = torch.softmax((40.0 * cosines ** 2).flatten(), 0).view(count, count)
        codes = codes - 0.5 * count * (weights * cosines) @ codes
        codes = codes / codes.norm(dim=1, keepdim=True)
    return codes.float()


def token_codes(vocab_size: int, bos_id: int, needle: Sequence[int], seed: int
                ) -> torch.Tensor:
    """[vocab, CODE_DIM] codes: the ``needle`` tokens one-hot in the first ``len(needle)``
    dims, every other token but BOS spread (:func:`spread_codes`) over the remaining dims,
    BOS zero."""
    codes = torch.zeros(vocab_size, CODE_DIM)
    block = len(needle)
    if block >= CODE_DIM // 2:
        raise PlantingError(f"the needle alphabet has {block} tokens; use at most "
                            f"{CODE_DIM // 2 - 1}")
    for index, token in enumerate(needle):
        codes[token, index] = 1.0
    rest = [t for t in range(vocab_size) if t != bos_id and t not in set(needle)]
    codes[rest, block:] = spread_codes(len(rest), CODE_DIM - block, seed)
    return codes


def _config(kind: str, vocab_size: int) -> Any:
    import transformers as tf

    common: dict[str, Any] = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2,
                              "pad_token_id": 0, "hidden_size": D_MODEL,
                              "intermediate_size": D_MLP, "num_hidden_layers": N_LAYERS,
                              "num_attention_heads": N_HEADS, "num_key_value_heads": N_KV_HEADS,
                              "head_dim": D_HEAD, "max_position_embeddings": MAX_POSITIONS,
                              "tie_word_embeddings": False}
    if kind == "llama":
        return tf.LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                              architectures=["LlamaForCausalLM"], **common)
    if kind == "gemma":
        rope = {"rope_type": "default", "rope_theta": ROPE_THETA}
        return tf.Gemma3TextConfig(
            sliding_window=SLIDING_WINDOW, layer_types=list(GEMMA_LAYER_TYPES),
            query_pre_attn_scalar=D_HEAD,  # logits scaled by 1 / sqrt(d_head), as Llama's
            attention_bias=True,  # the output bias carries the post-attention norm's anchor
            rope_parameters={"sliding_attention": dict(rope), "full_attention": dict(rope)},
            architectures=["Gemma3ForCausalLM"], **common)
    raise UnknownNameError(registry.unknown_name_message("planted model kind", kind,
                                                         list(KINDS)))


def planter_targets() -> dict[str, str]:
    """``{role: "module:function"}``: every head type's planters, then :data:`GENERIC_ROLES`."""
    table: dict[str, str] = {}
    for head_type in registry.head_types().values():
        for role, target in head_type.planters.items():
            if role in table:
                raise TypeError(f"planting role {role!r} is declared twice")
            table[role] = target
    for role, target in GENERIC_ROLES.items():
        if role in table:
            raise TypeError(f"planting role {role!r} is declared twice")
        table[role] = target
    return table


def list_roles() -> list[str]:
    """Names of every role :func:`planted_model` can plant."""
    return list(planter_targets())


def planted_model(
    kind: Kind,
    heads: Mapping[Head | tuple[int, int], str],
    *,
    seed: int = 0,
    needle_alphabet: str | None = None,
    role_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> PlantedModel:
    """A ``kind`` model (:data:`KINDS`) with random weights into which ``heads``
    ``{(layer, head): role}`` are planted, in layer order.

    Args:
        kind: ``"llama"`` or ``"gemma"`` (see the module docstring).
        heads: the heads to plant and their roles (:func:`list_roles`).
        seed: the random weights' and the token codes' seed (the global RNG is restored).
        needle_alphabet: characters whose tokens get a one-hot code block of their own
            (e.g. ``"0123456789"``), which copy heads can read apart from the other tokens.
        role_options: ``{role: options}`` passed to that role's planter for every head of
            the role (e.g. ``{"answer": {"token": "x"}}``).

    Raises:
        UnknownNameError: an unknown role (the message lists every role) or kind.
        PlantingError: a head out of range, two planted heads in one kv group, a role whose
            prerequisite is missing (an induction head without a previous-token head in an
            earlier layer), or options a planter refuses.
    """
    from headprobe.models import wrap_hf_model
    from headprobe.tiny import char_tokenizer

    if kind not in KINDS:
        raise UnknownNameError(registry.unknown_name_message("planted model kind", kind,
                                                             list(KINDS)))
    targets = planter_targets()
    roles: dict[Head, str] = {}
    for key, role in heads.items():
        head = Head(int(key[0]), int(key[1]))
        if role not in targets:
            raise UnknownNameError(registry.unknown_name_message("planting role", role,
                                                                 targets))
        if not (0 <= head.layer < N_LAYERS and 0 <= head.head < N_HEADS):
            raise PlantingError(f"head L{head.layer}H{head.head} is outside the planted "
                                f"model ({N_LAYERS} layers x {N_HEADS} heads)")
        roles[head] = role
    group = N_HEADS // N_KV_HEADS
    by_group: dict[tuple[int, int], Head] = {}
    for head in sorted(roles):
        slot = (head.layer, head.head // group)
        if slot in by_group:
            other = by_group[slot]
            raise PlantingError(
                f"planted heads L{other.layer}H{other.head} ({roles[other]}) and "
                f"L{head.layer}H{head.head} ({roles[head]}) share kv head {slot[1]} of layer "
                f"{head.layer} (query heads {group * slot[1]}..{group * slot[1] + group - 1}); "
                "plant them in different kv groups")
        by_group[slot] = head

    tokenizer = char_tokenizer()
    config = _config(kind, len(tokenizer))
    config._attn_implementation = "eager"
    bos = int(tokenizer.bos_token_id)
    needle = ([int(tokenizer.convert_tokens_to_ids(c)) for c in dict.fromkeys(needle_alphabet)]
              if needle_alphabet else [])
    state = torch.random.get_rng_state()
    try:  # seed the init without leaving the global RNG changed
        import transformers as tf

        torch.manual_seed(seed)
        hf = tf.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for param in hf.parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, 0.08)
    finally:
        torch.random.set_rng_state(state)
    codes = token_codes(len(tokenizer), bos, needle, seed)
    allocator = Allocator(D_MODEL, {"constant": 1, "bos": 1, "anchor": 1, "token": CODE_DIM,
                                    "previous": CODE_DIM, "copied": CODE_DIM}, SPARE_DIMS)
    _base_weights(hf, kind, allocator, codes, bos, set(roles), seed)
    bridge, spec = wrap_hf_model(hf.eval(), tokenizer, name=f"planted-{kind}",
                                 hf_name=f"planted-{kind}", device="cpu", dtype=torch.float32)
    planted = PlantedModel(kind, bridge, spec, allocator, roles, codes, frozenset(needle), seed,
                           {k: dict(v) for k, v in (role_options or {}).items()})
    for head in sorted(roles, key=lambda h: (h.layer, h.head)):
        plant = registry.resolve(targets[roles[head]])
        with torch.no_grad():
            plant(planted, head, **planted.options.get(roles[head], {}))
    return planted


def _base_weights(hf: Any, kind: str, allocator: Allocator, codes: torch.Tensor, bos: int,
                  planted: set[Head], seed: int) -> None:
    """Embedding, unembedding, norms, random heads' and MLPs' outputs (into ``noise``) and the
    planted heads' blank slots (zero q, k, v and o)."""
    noise, token, copied = allocator.noise.slice, allocator["token"].slice, allocator["copied"]
    keep = torch.zeros(D_MODEL, dtype=torch.bool)
    keep[noise] = True
    generator = torch.Generator().manual_seed(seed + 1)
    gemma = kind == "gemma"
    with torch.no_grad():
        embed = torch.zeros(len(codes), D_MODEL)
        embed[:, allocator["constant"].start] = CONSTANT
        embed[bos, allocator["bos"].start] = 1.0
        embed[:, token] = codes
        if gemma:  # Gemma scales the embedding by sqrt(d_model)
            embed = embed / float(hf.model.embed_tokens.embed_scale)
        hf.model.embed_tokens.weight.copy_(embed)
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[:, copied.slice] = UNEMBED * codes
        _fill_norm(hf.model.norm, 1.0, gemma)
        for layer_index, layer in enumerate(hf.model.layers):
            attn = layer.self_attn
            o_weight = attn.o_proj.weight  # [d_model, H * d_head]
            o_weight[~keep] = 0.0
            o_weight[keep] = NOISE_STD * torch.randn(int(keep.sum()), o_weight.shape[1],
                                                     generator=generator)
            down = layer.mlp.down_proj.weight
            down[~keep] = 0.0
            down[keep] = NOISE_STD * torch.randn(int(keep.sum()), down.shape[1],
                                                 generator=generator)
            _fill_norm(layer.input_layernorm, 1.0, gemma)
            if gemma:
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
                    proj.bias.zero_()
                attn.o_proj.bias[allocator["anchor"].start] = CONSTANT
                _fill_norm(layer.pre_feedforward_layernorm, 1.0, gemma)
                gains = torch.ones(D_MODEL)
                gains[allocator["anchor"].start] = 0.0
                _fill_norm(layer.post_attention_layernorm, gains, gemma)
                _fill_norm(layer.post_feedforward_layernorm, NOISE_GAIN, gemma)
                _fill_norm(attn.q_norm, LOGIT_SCALE / math.sqrt(D_HEAD), gemma)
                _fill_norm(attn.k_norm, 1.0, gemma)
            else:
                _fill_norm(layer.post_attention_layernorm, 1.0, gemma)
            for head in planted:
                if head.layer != layer_index:
                    continue
                kv = head.head // (N_HEADS // N_KV_HEADS)
                attn.q_proj.weight[_rows(head.head)] = 0.0
                attn.k_proj.weight[_rows(kv)] = 0.0
                attn.v_proj.weight[_rows(kv)] = 0.0
                o_weight[:, _rows(head.head)] = 0.0


def _fill_norm(norm: Any, gain: float | torch.Tensor, gemma: bool) -> None:
    """Set an RMSNorm's per-dimension gain (Gemma stores ``gain - 1``)."""
    value = torch.as_tensor(gain, dtype=norm.weight.dtype).expand_as(norm.weight)
    norm.weight.copy_(value - 1.0 if gemma else value)


def _rows(index: int) -> slice:
    return slice(index * D_HEAD, (index + 1) * D_HEAD)


# ---- writing helpers the planters share ----------------------------------------------------


def read_map(planted: PlantedModel, space: str, rows: Sequence[int] | None = None,
             matrix: torch.Tensor | None = None) -> torch.Tensor:
    """[len(rows), d_model] a map reading subspace ``space`` into head dimensions ``rows``:
    ``matrix`` [len(rows), size] (default: the identity on the first ``len(rows)`` coords),
    divided by the subspace's value after the norm (so the constant reads as 1)."""
    sub = planted.allocator[space]
    rows = list(rows) if rows is not None else list(range(sub.size))
    if matrix is None:
        matrix = torch.eye(len(rows), sub.size)
    out = torch.zeros(planted.spec.d_head, D_MODEL)
    out[rows, sub.slice] = matrix / planted.residual_value(space)
    return out


def write_qk(planted: PlantedModel, head: Head, q: torch.Tensor, k: torch.Tensor,
             scale: float = 1.0) -> None:
    """Write ``head``'s query map and its kv head's key map ([d_head, d_model] each, reading
    the normed residual), so that unit query and key vectors that align give logit
    ``scale * LOGIT_SCALE``. Llama: the query is multiplied by ``scale * LOGIT_SCALE *
    sqrt(d_head)`` (undoing the 1 / sqrt(d_head) of the attention). Gemma: the q/k norms
    rescale every query and key to length ``sqrt(d_head) * gain``, the q-norm gain giving
    :data:`LOGIT_SCALE`; ``scale`` must be 1 there (a shared gain cannot differ per head)."""
    attn = planted.attention(head.layer)
    kv = planted.kv_head(head)
    if planted.kind == "gemma":
        if scale != 1.0:
            raise PlantingError("on the gemma kind the q-norm gain sets every logit scale; "
                                "plant with scale=1")
        attn.q_proj.weight[_rows(head.head)] = q
    else:
        attn.q_proj.weight[_rows(head.head)] = q * scale * LOGIT_SCALE * math.sqrt(D_HEAD)
    attn.k_proj.weight[_rows(kv)] = k


def write_ov(planted: PlantedModel, head: Head, v: torch.Tensor, o: torch.Tensor) -> None:
    """Write ``head``'s kv head's value map ``v`` [d_head, d_model] and ``head``'s output map
    ``o`` [d_model, d_head]."""
    attn = planted.attention(head.layer)
    attn.v_proj.weight[_rows(planted.kv_head(head))] = v
    attn.o_proj.weight[:, _rows(head.head)] = o


def write_map(planted: PlantedModel, space: str, matrix: torch.Tensor,
              cols: Sequence[int] | None = None) -> torch.Tensor:
    """[d_model, d_head] an output map writing head dimensions ``cols`` into ``space``
    through ``matrix`` [size, len(cols)] (default: the identity)."""
    sub = planted.allocator[space]
    cols = list(cols) if cols is not None else list(range(matrix.shape[1]))
    out = torch.zeros(D_MODEL, planted.spec.d_head)
    out[sub.slice, cols] = matrix
    return out


def require_earlier(planted: PlantedModel, head: Head, role: str, why: str) -> None:
    """Raise :class:`PlantingError` unless a head of ``role`` is planted in a layer before
    ``head``'s."""
    if not any(h.layer < head.layer for h in planted.known(role)):
        raise PlantingError(f"L{head.layer}H{head.head} ({planted.roles[head]}) needs a "
                            f"{role} head in an earlier layer ({why}); plant one, e.g. "
                            f"{{(0, 0): {role!r}}}")


def offset_qk(planted: PlantedModel, head: Head, offset: int = 1, *, pairs: int | None = None
              ) -> None:
    """Make ``head`` attend from each query ``i`` to key ``i - offset`` by rotary position
    alone: query and key read the constant dimension into the fastest rotary pairs ``p``,
    the query as ``(1, 0)`` and the key as ``(cos(w_p offset), sin(w_p offset))``, so their
    product is ``sum_p cos(w_p (i - j - offset))``, largest at ``j = i - offset``.

    ``pairs`` (default: the number that separates key ``i - offset`` best from every other
    key within :data:`MAX_POSITIONS`) sets how many of the fastest pairs are used."""
    freqs = planted.rotary_frequencies(head.layer)
    order = torch.argsort(freqs, descending=True)
    if pairs is None:
        pairs = best_offset_pairs(freqs[order], offset)
    chosen = order[:pairs]
    half = planted.spec.d_head // 2
    unit = 1.0 / math.sqrt(pairs)
    q = torch.zeros(planted.spec.d_head, 1)
    k = torch.zeros(planted.spec.d_head, 1)
    for p in chosen.tolist():
        q[p, 0] = unit
        k[p, 0] = unit * math.cos(float(freqs[p]) * offset)
        k[p + half, 0] = unit * math.sin(float(freqs[p]) * offset)
    write_qk(planted, head, read_map(planted, "constant", range(planted.spec.d_head), q),
             read_map(planted, "constant", range(planted.spec.d_head), k))


def best_offset_pairs(freqs_fast_first: torch.Tensor, offset: int, span: int = MAX_POSITIONS
                      ) -> int:
    """How many of the fastest rotary pairs (equal weights) give the largest gap between the
    normalised logit at distance ``offset`` (1) and at any other distance in ``0 .. span``."""
    distances = torch.arange(span + 1, dtype=torch.float64)
    others = distances != offset
    cosines = torch.cos((distances[:, None] - offset) * freqs_fast_first.double()[None])
    counts = torch.arange(1, len(freqs_fast_first) + 1, dtype=torch.float64)
    means = cosines.cumsum(1) / counts  # [distance, count]: the normalised logit
    gaps = 1.0 - means[others].max(0).values
    return int(gaps.argmax()) + 1


def match_qk(planted: PlantedModel, head: Head, query: Callable[[torch.Tensor], torch.Tensor],
             key_space: str, query_space: str = "token", *, block: str = "all") -> None:
    """Content matching: ``head``'s query reads ``query_space``'s code and its key reads
    ``key_space``'s code, both on the slow rotary dims (:meth:`PlantedModel.slow_dims`),
    so the logit is ``LOGIT_SCALE * cos(code_q, code_k)``.

    ``block``: ``"all"`` reads the whole code, ``"needle"`` only the needle alphabet's one-hot
    block, ``"rest"`` only the other tokens' block (a query outside the block reads zero
    and attends evenly). ``query`` maps the [CODE_DIM, CODE_DIM] identity to the matrix the
    query applies before matching (identity: ``lambda m: m``)."""
    n_needle = len(planted.needle_tokens)
    mask = torch.ones(CODE_DIM)
    if block == "needle":
        if not n_needle:
            raise PlantingError(f"L{head.layer}H{head.head} ({planted.roles[head]}) copies "
                                "the needle alphabet, but the model has none: pass "
                                "needle_alphabet='0123456789' to planted_model")
        mask[n_needle:] = 0.0
    elif block == "rest":
        mask[:n_needle] = 0.0
    elif block != "all":
        raise PlantingError(f"block must be 'all', 'needle' or 'rest', got {block!r}")
    dims = planted.slow_dims(head.layer)
    select = torch.diag(mask)
    write_qk(planted, head, read_map(planted, query_space, dims, query(select)),
             read_map(planted, key_space, dims, select))


def copy_head(planted: PlantedModel, head: Head, *, block: str = "all",
              gain: float = 1.0) -> None:
    """A copy head (the induction mechanism, Olsson et al. 2022): the query reads the current
    token's code, the key the previous-token code (written by a previous-token head in an
    earlier layer), so the head attends to the token after an earlier copy of the current
    token; its OV writes that token's code into ``copied``, which the unembedding reads, so
    the model predicts it. ``block`` restricts the tokens it copies (:func:`match_qk`)."""
    require_earlier(planted, head, "previous_token", "its key reads the previous-token code")
    match_qk(planted, head, lambda m: m, "previous", "token", block=block)
    copy_ov(planted, head, "token", "copied", gain=gain)


def copy_ov(planted: PlantedModel, head: Head, source: str, target: str, *,
            matrix: torch.Tensor | None = None, gain: float = 1.0) -> None:
    """``head``'s OV reads ``source``'s code and writes ``gain * matrix @ code`` into
    ``target`` (``matrix`` [target size, source size], default the identity)."""
    src = planted.allocator[source]
    dst = planted.allocator[target]
    if matrix is None:
        matrix = torch.eye(dst.size, src.size)
    d_head = planted.spec.d_head
    width = min(src.size, d_head)
    v = read_map(planted, source, range(width), torch.eye(width, src.size))
    o = write_map(planted, target, gain * matrix[:, :width], range(width))
    write_ov(planted, head, v, o)


def bos_qk(planted: PlantedModel, head: Head) -> None:
    """``head`` attends to the first (BOS) token: the query reads the constant, the key the
    BOS flag, both on the slowest rotary pair."""
    dims = planted.slow_dims(head.layer, 2)[:1]
    write_qk(planted, head, read_map(planted, "constant", dims, torch.ones(1, 1)),
             read_map(planted, "bos", dims, torch.ones(1, 1)))


def uniform_qk(planted: PlantedModel, head: Head) -> None:
    """``head`` attends evenly to every allowed key (zero query and key)."""
    write_qk(planted, head, torch.zeros(planted.spec.d_head, D_MODEL),
             torch.zeros(planted.spec.d_head, D_MODEL))


def plant_answer(planted: PlantedModel, head: Head, *, token: str = "x",
                 gain: float = 0.5) -> None:
    """The generic ``answer`` role: a head that pushes one answer token at every position.

    It attends evenly (zero query and key: no sink, no positional pattern), its value reads
    the constant dimension (the same at every key, so the attention pattern does not matter)
    and its output writes ``gain`` times ``token``'s code into ``copied``: every logit gets
    ``UNEMBED * gain * cos(code(token), code(t))``, the answer's the most (``gain`` 0.5: half a
    copy head's push, so copies still win the next token). Direct logit attribution must rank
    it first on ``logit(token) - logit(other)``."""
    uniform_qk(planted, head)
    v = read_map(planted, "constant", [0], torch.ones(1, 1))
    o = write_map(planted, "copied", gain * planted.code(token)[:, None], [0])
    write_ov(planted, head, v, o)


__all__ = [
    "CODE_DIM", "D_HEAD", "D_MODEL", "GENERIC_ROLES", "KINDS", "LOGIT_SCALE", "N_HEADS",
    "N_KV_HEADS", "N_LAYERS", "SLIDING_WINDOW", "Allocator", "PlantedModel", "Subspace",
    "best_offset_pairs", "bos_qk", "copy_head", "copy_ov", "list_roles", "match_qk",
    "offset_qk", "plant_answer", "planted_model", "planter_targets",
    "read_map", "require_earlier", "spread_codes", "token_codes", "uniform_qk", "write_map",
    "write_ov", "write_qk",
]
