"""Architecture facts, kept as data in one place.

Everything headprobe needs to know about a model family (how its heads are grouped, which
norm it uses, whether it normalises queries after their projection, where the Hugging Face
modules live, which TransformerLens hook names to use) is read from the tables here. Code
elsewhere asks :class:`ModelSpec` instead of testing ``model_type`` strings.

Notation used across the package: ``L`` layers, ``H`` query heads per layer, ``H_kv``
key/value heads (grouped-query attention when ``H_kv < H``: query head ``h`` reads kv head
``h // (H // H_kv)``), ``T`` tokens, ``B`` batch size, ``N`` prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from headprobe.errors import HeadIndexError
from headprobe.types import Head

NormKind = Literal["rmsnorm", "layernorm"]


@dataclass(frozen=True)
class HookNames:
    """TransformerLens ``TransformerBridge`` hook-name templates (``{layer}`` is filled in).

    Shapes (bridge conventions): ``pattern`` [B, H, T_q, T_k]; ``z`` [B, T, H, d_head];
    ``q`` [B, T, H, d_head]; ``k``/``v`` [B, T, H_kv, d_head]; ``resid_pre`` /
    ``resid_post`` [B, T, d_model]. ``rot_q`` [B, T, H, d_head]: queries after rotary (and
    after a pre-rotary q norm), rotary models only (``rot_k`` [B, T, H_kv, d_head]: the
    keys likewise); ``q_normed`` [B, H, T, d_head]: queries
    after the q norm, models with one (Gemma 3).
    """

    pattern: str = "blocks.{layer}.attn.hook_pattern"
    attn_scores: str = "blocks.{layer}.attn.hook_attn_scores"
    z: str = "blocks.{layer}.attn.hook_z"
    q: str = "blocks.{layer}.attn.hook_q"
    k: str = "blocks.{layer}.attn.hook_k"
    v: str = "blocks.{layer}.attn.hook_v"
    rot_q: str = "blocks.{layer}.attn.hook_rot_q"
    rot_k: str = "blocks.{layer}.attn.hook_rot_k"
    q_normed: str = "blocks.{layer}.attn.hook_q_normed"
    attn_out: str = "blocks.{layer}.hook_attn_out"
    mlp_out: str = "blocks.{layer}.hook_mlp_out"
    resid_pre: str = "blocks.{layer}.hook_resid_pre"
    resid_mid: str = "blocks.{layer}.hook_resid_mid"
    resid_post: str = "blocks.{layer}.hook_resid_post"
    final_norm_scale: str = "ln_final.hook_scale"
    # Split q/k/v inputs (only fire with ``use_split_qkv_input``): per-consumer copies of the
    # pre-norm residual stream, q_input [B, T, H, d_model], k_input / v_input
    # [B, T, H_kv, d_model]; final_norm_in: the final norm's input [B, T, d_model].
    q_input: str = "blocks.{layer}.attn.hook_q_input"
    k_input: str = "blocks.{layer}.attn.hook_k_input"
    v_input: str = "blocks.{layer}.attn.hook_v_input"
    final_norm_in: str = "ln_final.hook_in"
    # unembed_in: the unembedding's input, the final-normed hidden state [B, T, d_model]
    # ([B, d_model] when the layer runner reads out chosen positions only)
    unembed_in: str = "unembed.hook_in"
    embed: str = "hook_embed"
    pos_embed: str = "hook_pos_embed"
    post_attention_norm_scale: str = "blocks.{layer}.ln1_post.hook_scale"

    def at(self, kind: str, layer: int) -> str:
        """The hook name of ``kind`` (a field name) at ``layer``."""
        return getattr(self, kind).format(layer=layer)


@dataclass(frozen=True)
class ArchitectureFacts:
    """Facts about one Hugging Face ``model_type`` that headprobe relies on.

    Module paths are relative to the Hugging Face model (``bridge.original_model``).
    ``learned_pos_embed``: a learned absolute position embedding is added to the residual
    (GPT-2), seen at ``hooks.pos_embed``. ``norm_weight_offset``: RMSNorm multiplies by
    ``offset + weight`` (Gemma: ``1 + weight``). ``final_norm`` / ``unembed``: module paths
    of the final norm and the unembedding (``lm_head``). ``embed``: the token embedding module
    (its output is ``hook_embed``; Gemma's scaling is inside it); ``None`` means
    ``{decoder}.embed_tokens``. ``layer_runner``: the layer runner
    (:mod:`headprobe.runtime.layers`: the fast scans and the KV-cached decode step) can run
    this architecture; without it the decode step calls the HF model directly and the fast
    scans refuse (GPT-2: learned positions added at layer 0, no rotary table).

    ``vision_language``: the entry describes a vision-language wrapper (e.g. LLaVA) and is
    keyed by the top-level config's ``model_type``; its paths point at the text model inside
    the wrapper (``model.language_model.layers``, a top-level ``lm_head``) and its other facts
    are the text model's. The spec's sizes still come from ``config.text_config``.

    ``attn_scaling_attr``: the attribute of the HF attention module holding the factor its
    scores ``q . k`` are multiplied by (``1 / sqrt(d_head)`` for Llama; Gemma 3's
    ``query_pre_attn_scalar ** -0.5``; GPT-2's layer-wise variant), read by the decode-time
    observer (:mod:`headprobe.runtime.observer`).
    """

    family: str
    norm: NormKind
    causal: bool = True
    has_qk_norm: bool = False
    has_post_attention_norm: bool = False
    layers_path: str = "model.layers"
    attention_module: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    q_norm: str | None = None
    post_attention_norm: str | None = None
    learned_pos_embed: bool = False
    norm_weight_offset: float = 0.0
    decoder: str = "model"
    embed: str | None = None
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    rotary: str | None = "model.rotary_emb"
    layer_runner: bool = True
    final_softcap_attr: str = "final_logit_softcapping"
    attn_softcap_attr: str = "attn_logit_softcapping"
    attn_scaling_attr: str = "scaling"
    vision_language: bool = False
    hooks: HookNames = field(default_factory=HookNames)


ARCHITECTURES: dict[str, ArchitectureFacts] = {
    "llama": ArchitectureFacts(family="llama", norm="rmsnorm"),
    "mistral": ArchitectureFacts(family="llama", norm="rmsnorm"),
    "qwen2": ArchitectureFacts(family="llama", norm="rmsnorm"),
    "gemma3_text": ArchitectureFacts(
        family="gemma3",
        norm="rmsnorm",
        has_qk_norm=True,
        has_post_attention_norm=True,
        q_norm="q_norm",
        post_attention_norm="post_attention_layernorm",
        norm_weight_offset=1.0,
    ),
    "gpt2": ArchitectureFacts(
        family="gpt2",
        norm="layernorm",
        layers_path="transformer.h",
        attention_module="attn",
        q_proj="c_attn",
        k_proj="c_attn",
        v_proj="c_attn",
        o_proj="c_proj",
        learned_pos_embed=True,
        decoder="transformer",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        rotary=None,
        layer_runner=False,
    ),
    "bert": ArchitectureFacts(
        family="bert",
        norm="layernorm",
        causal=False,
        layers_path="bert.encoder.layer",
        attention_module="attention.self",
        q_proj="query",
        k_proj="key",
        v_proj="value",
        o_proj="output.dense",
        decoder="bert.encoder",
        embed="bert.embeddings.word_embeddings",
        final_norm="cls.predictions.transform.LayerNorm",
        unembed="cls.predictions.decoder",
        rotary=None,
        layer_runner=False,
    ),
    # LlavaForConditionalGeneration: a Llama-family text model under model.language_model
    # (LLaVA 1.5 checkpoints: Llama / Vicuna / Mistral), lm_head at the top level.
    "llava": ArchitectureFacts(
        family="llava",
        norm="rmsnorm",
        layers_path="model.language_model.layers",
        decoder="model.language_model",
        final_norm="model.language_model.norm",
        rotary="model.language_model.rotary_emb",
        vision_language=True,
    ),
    # Qwen2_5_VLForConditionalGeneration (Qwen2-VL-style): a Qwen2 text model (q/k/v biases)
    # under model.language_model, lm_head at the top level, vision tower at model.visual.
    # Its rotary is multimodal (mRoPE): 3-D (time, height, width) position ids, one per
    # rotary section, which image tokens need and headprobe's layer runner does not build
    # (it passes 1-D positions, which give different logits on image prompts), so
    # layer_runner=False: the fast scans refuse, the decode step refuses image prompts
    # (ImageGenerationError); forward_batch passes the 3-D positions that
    # headprobe.images.encode_image_prompt stores in the prompt's extra inputs.
    "qwen2_5_vl": ArchitectureFacts(
        family="qwen2_5_vl",
        norm="rmsnorm",
        layers_path="model.language_model.layers",
        decoder="model.language_model",
        final_norm="model.language_model.norm",
        rotary="model.language_model.rotary_emb",
        layer_runner=False,
        vision_language=True,
    ),
}


def architecture_facts(model_type: str) -> ArchitectureFacts:
    """Facts for ``model_type``; unknown types get generic causal pre-norm facts."""
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    return ArchitectureFacts(family=model_type, norm="rmsnorm", layer_runner=False)


@dataclass(frozen=True)
class ModelSpec:
    """A small record of the loaded model's shape and the facts scorers need.

    Attributes:
        name: the spec the model was loaded from (packaged name, path or hub name).
        model_type: Hugging Face ``config.model_type`` (e.g. ``llama``, ``gemma3_text``).
        n_layers, n_heads, n_kv_heads, d_head, d_model, d_vocab: sizes.
        n_ctx: context length the model accepts.
        facts: the :class:`ArchitectureFacts` of the family.
        bos_token_id, pad_token_id: special tokens (``None`` when the tokenizer has none).
        layer_types: the attention type of every layer (``full_attention``,
            ``sliding_attention``), from the config (all ``full_attention`` when it says none).
        sliding_window: the window of sliding layers, or None.
        final_logit_softcap, attn_logit_softcap: soft-caps (``cap * tanh(x / cap)``) of the
            logits and of the attention scores, or None.
        dtype: the parameter dtype (``"float32"``, ``"bfloat16"``, ...); device: where the
            model lives (``"cpu"``, ``"cuda:0"``); for a model spread over devices by a
            device map, its main device, where inputs go and outputs come back.
        device_map: ``(module path, device)`` pairs of a model spread over devices by
            Hugging Face accelerate (:func:`headprobe.catalogue.load_model` with ``device_map=``;
            devices ``"cuda:0"``, ``"cpu"``, ``"disk"``...), in the map's order; empty for a
            model on one device. ``to_dict`` gives it as ``{path: device}`` and leaves it out
            when empty.
    """

    name: str
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_vocab: int
    n_ctx: int
    facts: ArchitectureFacts
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    dtype: str = "float32"
    device: str = "cpu"
    device_map: tuple[tuple[str, str], ...] = ()

    @property
    def norm(self) -> NormKind:
        return self.facts.norm

    @property
    def causal(self) -> bool:
        return self.facts.causal

    @property
    def hooks(self) -> HookNames:
        return self.facts.hooks

    @property
    def group_size(self) -> int:
        """Query heads per kv head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def kv_head(self, head: int) -> int:
        """The kv head that query head ``head`` reads."""
        return head // self.group_size

    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise HeadIndexError(
                f"layer {layer!r} is out of range: {self.name} has layers 0..{self.n_layers - 1}"
            )
        return layer

    def check_head(self, layer: int, head: int) -> Head:
        """Validate a (layer, head) pair and return it; raises :class:`HeadIndexError`."""
        self.check_layer(layer)
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < self.n_heads:
            raise HeadIndexError(
                f"head {head!r} is out of range: {self.name} has heads 0..{self.n_heads - 1} "
                f"in each layer (asked for layer {layer} head {head})"
            )
        return Head(layer, head)

    def check_layers(self, layers: Sequence[int] | None) -> list[int]:
        """``layers`` validated (all layers when None), in the given order."""
        chosen = list(range(self.n_layers)) if layers is None else list(layers)
        for layer in chosen:
            self.check_layer(layer)
        return chosen

    def all_heads(self) -> list[Head]:
        """Every query head, layer by layer."""
        return [Head(layer, head) for layer in range(self.n_layers)
                for head in range(self.n_heads)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["facts"] = {k: v for k, v in out["facts"].items() if k != "hooks"}
        out["group_size"] = self.group_size
        if self.device_map:
            out["device_map"] = dict(self.device_map)
        else:  # single-device specs keep their old keys (run keys hash this dict)
            del out["device_map"]
        return out


def spec_from_hf_config(
    name: str,
    config: Any,
    *,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    device_map: Sequence[tuple[str, str]] = (),
) -> ModelSpec:
    """Build a :class:`ModelSpec` from a Hugging Face config.

    For a vision-language config (one with a ``text_config``) the sizes and ``model_type`` are
    the text model's; the facts are the wrapper's entry (keyed by the top-level
    ``model_type``, ``vision_language=True``) when there is one, else the text model's.
    """
    wrapper = vision_language_facts(config)
    config = getattr(config, "text_config", None) or config
    model_type = config.model_type
    n_heads = _first_attr(config, ("num_attention_heads", "n_head"))
    d_model = _first_attr(config, ("hidden_size", "n_embd"))
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    n_ctx = _first_attr(config, ("max_position_embeddings", "n_positions"))
    facts = wrapper if wrapper is not None else architecture_facts(model_type)
    n_layers = _first_attr(config, ("num_hidden_layers", "n_layer"))
    layer_types = tuple(getattr(config, "layer_types", None) or ["full_attention"] * n_layers)
    return ModelSpec(
        name=name,
        model_type=model_type,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_model=d_model,
        d_vocab=config.vocab_size,
        n_ctx=n_ctx,
        facts=facts,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
        layer_types=layer_types,
        sliding_window=(getattr(config, "sliding_window", None)
                        if "sliding_attention" in layer_types else None),
        final_logit_softcap=getattr(config, facts.final_softcap_attr, None),
        attn_logit_softcap=getattr(config, facts.attn_softcap_attr, None),
        dtype=dtype,
        device=device,
        device_map=tuple((str(path), str(where)) for path, where in device_map),
    )


def vision_language_facts(config: Any) -> ArchitectureFacts | None:
    """The facts of a vision-language wrapper config: the entry of its top-level
    ``model_type`` when the config has a ``text_config`` and that entry is a
    ``vision_language`` one; None otherwise (text models, unknown wrappers)."""
    if getattr(config, "text_config", None) is None:
        return None
    facts = ARCHITECTURES.get(getattr(config, "model_type", ""))
    return facts if facts is not None and facts.vision_language else None


def _first_attr(config: Any, names: tuple[str, ...]) -> Any:
    for attr in names:
        value = getattr(config, attr, None)
        if value is not None:
            return value
    raise AttributeError(f"config of type {type(config).__name__} has none of {names}")
