"""A planted OCR head: an image-patch reading head written by hand into the tiny LLaVA
(:func:`headprobe.tiny.tiny_hf_model` ``"llava"``), ground truth for the ``ocr`` scorer
(issue 19).

:func:`headprobe.planting.planted_model` builds text-only models (no vision tower, no image
tokens), so the OCR head is planted here, into the tiny LLaVA itself: a CLIP tower (32 x 32
images, a 4 x 4 grid of 8 x 8 patches), a projector and a 2-layer Llama (d_model 64, 4 query
heads over 2 kv heads, d_head 16) whose other weights stay random.

**The text.** An image is black with one *character* drawn as a coloured patch: the colour is
the character (:data:`COLOURS`: ``r`` red, ``g`` green, ``b`` blue, ``y`` yellow, ``c`` cyan,
``m`` magenta, ``w`` white), so the text box is that patch's pixel box
(:func:`colour_items`).

**The path the head reads** (weights written here; the rest of each module stays random):

- vision tower: the patch embedding gives each patch the mean of each normalised colour
  channel minus black's (``u_c``, 0 on black) and its negation, the position embedding a
  constant pair ``(+K, -K)`` (K = :data:`BIG`) so the pre-layer norm divides by an almost
  constant standard deviation (its gain undoes it), and every encoder layer writes nothing
  (zero ``out_proj`` and ``fc2``): a patch's feature is ``(u_R, u_G, u_B, -u_R, -u_G, -u_B)``;
- projector: ``gelu(x) - gelu(-x) = x`` carries ``u`` through exactly: image tokens get
  ``ink = u_R + u_G + u_B`` and the three colours in reserved residual dimensions, 0 elsewhere;
- language model: the residual's last 8 dimensions are reserved (:data:`RESERVED`): the
  constant (every text token's embedding holds :data:`CONSTANT` there), ink, the three
  colours and the three output colours. No random head or MLP writes into them (their output
  rows there are zero), so only the planted head reads and writes them.

**The reading head** (default L0H1): its query reads the constant and its key the ink on the
slowest rotary pair, so from any text token it attends to the inked patch (logit about 30,
every other key 0); its value reads the patch's three colours and its output writes them, times
``gain``, into the output dims, which the unembedding reads: ``W_U[c] = UNEMBED * colour(c) /
|colour(c)|`` on them (0 for every other token there). So the greedy reading is the
character drawn; with the head removed the output dims are empty and the reading is the random
rest's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from headprobe.errors import PlantingError
from headprobe.inputs import ImagePrompt
from headprobe.tasks.base import TaskItem
from headprobe.types import Head

COLOURS: dict[str, tuple[int, int, int]] = {
    "r": (1, 0, 0), "g": (0, 1, 0), "b": (0, 0, 1), "y": (1, 1, 0), "c": (0, 1, 1),
    "m": (1, 0, 1), "w": (1, 1, 1),
}
PROMPT = "<image> read:"
IMAGE_SIZE = 32
PATCH = 8
GRID = IMAGE_SIZE // PATCH
BIG = 100.0  # the vision tower's constant pair: the pre-layer norm's std is ~BIG / 4
CONSTANT = 8.0  # text tokens' constant dimension (sqrt(d_model): residual RMS ~ 1)
UNEMBED = 10.0
QUERY_GAIN = 3.0  # query weight on the constant: an inked key's logit is ~30
DEFAULT_HEAD = Head(0, 1)
# the language model's reserved residual dimensions (d_model 64): the last 8
CONSTANT_DIM = 56
INK_DIM = 57
COLOUR_DIMS = (58, 59, 60)
OUT_DIMS = (61, 62, 63)
RESERVED = slice(CONSTANT_DIM, OUT_DIMS[-1] + 1)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PlantedLlava:
    """The tiny LLaVA with a planted reading head.

    Attributes:
        bridge: the TransformerBridge (``bridge.headprobe_processor`` set).
        spec: its :class:`~headprobe.arch.ModelSpec`.
        head: the planted reading head.
        seed: the random weights' seed.
    """

    bridge: Any
    spec: Any
    head: Head
    seed: int

    @property
    def hf(self) -> Any:
        return self.bridge.original_model


def _vision_path(hf: Any) -> None:
    """Vision tower and projector: image tokens carry (ink, colours) in the reserved dims."""
    tower = hf.model.vision_tower
    emb = tower.embeddings
    conv = emb.patch_embedding.weight  # [32, 3, P, P]
    conv.zero_()
    for channel in range(3):
        conv[channel, channel] = 1.0 / (PATCH * PATCH)  # mean of the normalised channel
        conv[3 + channel, channel] = -1.0 / (PATCH * PATCH)
    black = torch.tensor([-m / s for m, s in zip(_CLIP_MEAN, _CLIP_STD, strict=True)])
    position = torch.zeros_like(emb.position_embedding.weight)  # [1 + patches, 32]
    position[:, 0:3] = -black
    position[:, 3:6] = black
    position[:, 6], position[:, 7] = BIG, -BIG
    emb.position_embedding.weight.copy_(position)
    emb.class_embedding.zero_()
    norm = tower.pre_layrnorm
    norm.weight.zero_()
    norm.weight[:6] = BIG / 4.0  # undo the std (~BIG / 4 over 32 dims: the constant pair)
    norm.bias.zero_()
    for layer in tower.encoder.layers:
        for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
    projector = hf.model.multi_modal_projector
    projector.linear_1.weight.zero_()
    projector.linear_1.bias.zero_()
    projector.linear_2.weight.zero_()
    projector.linear_2.bias.zero_()
    for channel in range(3):
        projector.linear_1.weight[channel, channel] = 1.0  # +u_c
        projector.linear_1.weight[3 + channel, channel] = -1.0  # -u_c
        for row in (COLOUR_DIMS[channel], INK_DIM):
            projector.linear_2.weight[row, channel] = 1.0  # gelu(u) - gelu(-u) = u
            projector.linear_2.weight[row, 3 + channel] = -1.0


def _language_base(hf: Any) -> None:
    """Reserve the last 8 residual dims: text tokens' constant, no random writer, unit norm
    gains, the unembedding reading only the output colours there."""
    lm = hf.model.language_model
    reserved = RESERVED
    lm.embed_tokens.weight[:, reserved] = 0.0
    lm.embed_tokens.weight[:, CONSTANT_DIM] = CONSTANT
    for layer in lm.layers:
        layer.self_attn.o_proj.weight[reserved] = 0.0
        layer.mlp.down_proj.weight[reserved] = 0.0
        layer.input_layernorm.weight[reserved] = 1.0
        layer.post_attention_layernorm.weight[reserved] = 1.0
    lm.norm.weight[reserved] = 1.0
    hf.lm_head.weight[:, reserved] = 0.0


def plant_reading_head(hf: Any, tokenizer: Any, head: Head, *, gain: float = 3.0) -> None:
    """Write the reading head ``head`` (module docstring) into the tiny LLaVA ``hf`` (whose
    reserved dims :func:`planted_llava_hf` set up) and the unembedding of the colour
    characters. ``head`` must be in layer 0, where the residual is the embeddings alone."""
    config = hf.config.text_config
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    d_head = config.head_dim or config.hidden_size // n_heads
    if head.layer != 0 or not 0 <= head.head < n_heads:
        raise PlantingError(f"the OCR reading head must be in layer 0 of the tiny LLaVA "
                            f"(heads 0..{n_heads - 1}), got L{head.layer}H{head.head}")
    attn = hf.model.language_model.layers[0].self_attn
    kv = head.head // (n_heads // n_kv)
    q_rows = slice(head.head * d_head, (head.head + 1) * d_head)
    kv_rows = slice(kv * d_head, (kv + 1) * d_head)
    slow = d_head // 2 - 1  # the slowest rotary pair is (d/2 - 1, d - 1)
    attn.q_proj.weight[q_rows] = 0.0
    attn.k_proj.weight[kv_rows] = 0.0
    attn.v_proj.weight[kv_rows] = 0.0
    attn.o_proj.weight[:, q_rows] = 0.0
    attn.q_proj.weight[head.head * d_head + slow, CONSTANT_DIM] = QUERY_GAIN
    attn.k_proj.weight[kv * d_head + slow, INK_DIM] = 1.0
    for index, (src, dst) in enumerate(zip(COLOUR_DIMS, OUT_DIMS, strict=True)):
        attn.v_proj.weight[kv * d_head + index, src] = 1.0
        attn.o_proj.weight[dst, head.head * d_head + index] = gain
    for char, colour in COLOURS.items():
        vector = torch.tensor(colour, dtype=torch.float32)
        token = int(tokenizer.convert_tokens_to_ids(char))
        hf.lm_head.weight[token, list(OUT_DIMS)] = UNEMBED * vector / vector.norm()


def planted_llava_hf(head: Head | tuple[int, int] = DEFAULT_HEAD, seed: int = 0, *,
                     gain: float = 3.0) -> tuple[Any, Any, Any]:
    """The unwrapped tiny LLaVA of ``seed`` with a reading head at ``head``:
    ``(hf_model, tokenizer, processor)`` (no bridge; tests use it as the reference)."""
    from headprobe.tiny import tiny_hf_model

    hf, tokenizer, processor = tiny_hf_model("llava", seed)
    with torch.no_grad():
        _vision_path(hf)
        _language_base(hf)
        plant_reading_head(hf, tokenizer, Head(int(head[0]), int(head[1])), gain=gain)
    return hf, tokenizer, processor


def planted_llava(head: Head | tuple[int, int] = DEFAULT_HEAD, seed: int = 0, *,
                  gain: float = 3.0) -> PlantedLlava:
    """The tiny LLaVA of ``seed`` with a reading head planted at ``head`` (module
    docstring), wrapped in a bridge."""
    from headprobe.models import wrap_hf_model

    hf, tokenizer, processor = planted_llava_hf(head, seed, gain=gain)
    bridge, spec = wrap_hf_model(hf, tokenizer, name="planted-llava", hf_name="planted-llava",
                                 device="cpu", dtype=torch.float32, processor=processor)
    return PlantedLlava(bridge, spec, Head(int(head[0]), int(head[1])), seed)


def patch_box(row: int, col: int) -> tuple[int, int, int, int]:
    """The pixel box ``(x0, y0, x1, y1)`` of patch ``(row, col)``."""
    return (col * PATCH, row * PATCH, (col + 1) * PATCH, (row + 1) * PATCH)


def colour_items(n: int = 8, seed: int = 0) -> list[TaskItem]:
    """``n`` images, each black with one character drawn as a coloured patch at a random
    place; the answer is the character, ``box`` and ``char_boxes`` its patch's box."""
    rng = np.random.default_rng(seed)
    chars = list(COLOURS)
    items = []
    for _ in range(n):
        char = chars[int(rng.integers(len(chars)))]
        row, col = (int(v) for v in rng.integers(GRID, size=2))
        image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        image[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = (
            255 * np.array(COLOURS[char], dtype=np.uint8))
        box = patch_box(row, col)
        items.append(TaskItem(prompt=ImagePrompt(PROMPT, [image]), answer=char,
                              meta={"box": box, "char_boxes": [box], "patch": (row, col)}))
    return items


__all__ = ["COLOURS", "COLOUR_DIMS", "CONSTANT_DIM", "DEFAULT_HEAD", "INK_DIM", "OUT_DIMS",
           "PROMPT", "RESERVED", "PlantedLlava", "colour_items", "patch_box",
           "plant_reading_head", "planted_llava", "planted_llava_hf"]
