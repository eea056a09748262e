"""Image features merged into the token embeddings, for routes that run layers from embeddings.

A LLaVA-style model builds the residual entering its language model's layer 0 by embedding
the ids (image placeholder tokens included) and then overwriting every image token's row with
the projected vision features, in row-major order of the image tokens (HF's
``masked_scatter``). The KV-cached decode step (:mod:`headprobe.runtime.decode`) runs the layers
from embeddings, so it needs the same merge; :class:`BatchImageFeatures` does it for one padded
batch: the features are computed once (through the HF model's own ``get_image_features``),
then merged into whichever columns a forward covers (a prefill chunk or step 0).

Only models whose language model takes 1-D positions qualify (Qwen2-VL-style models give image
tokens 3-D multimodal rotary positions that the layer runner does not build);
:func:`headprobe.runtime.decode.generate` checks that before building one.
"""

from __future__ import annotations

from typing import Any

import torch

from headprobe.errors import ImageGenerationError
from headprobe.inputs import Batch


def vision_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """[N_image_tokens, d_model] projected vision features of ``pixel_values`` [N, 3, H, W]
    (the model's ``get_image_features`` with its config's feature layer and selection),
    concatenated over images in order."""
    hf = model.original_model
    config = hf.config
    getter = getattr(hf, "get_image_features", None)
    if getter is None:
        raise ImageGenerationError(f"{type(hf).__name__} has no get_image_features; headprobe "
                                   "cannot merge its image features for generation")
    output = getter(pixel_values=pixel_values,
                    vision_feature_layer=getattr(config, "vision_feature_layer", -1),
                    vision_feature_select_strategy=getattr(
                        config, "vision_feature_select_strategy", "default"))
    features = getattr(output, "pooler_output", output)
    if isinstance(features, list | tuple):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    return features.reshape(-1, features.shape[-1])


class BatchImageFeatures:
    """The image features of one padded batch, placed at its image-token columns.

    Attributes:
        mask: [B, T] bool, True at the batch's image-token columns.
        values: [B, T, d_model] the feature of each image-token column (zeros elsewhere).
    """

    def __init__(self, model: Any, batch: Batch, image_token: int,
                 dtype: torch.dtype) -> None:
        pixel_values = batch.extra.get("pixel_values")
        self.mask = (batch.tokens == image_token) & batch.attention_mask  # [B, T]
        n_slots = int(self.mask.sum())
        if pixel_values is None:
            raise ImageGenerationError("the batch has image tokens but no pixel_values")
        with torch.no_grad():
            features = vision_features(model, pixel_values).to(dtype)  # [n_slots, D]
        if features.shape[0] != n_slots:
            raise ImageGenerationError(
                f"the images give {features.shape[0]} feature rows but the prompts hold "
                f"{n_slots} image tokens")
        self.values = torch.zeros((*self.mask.shape, features.shape[-1]), dtype=dtype,
                                  device=features.device)
        self.values[self.mask.to(features.device)] = features

    def merge(self, resid: torch.Tensor, start: int) -> torch.Tensor:
        """``resid`` [B, S, D] (embeddings of columns ``start..start + S - 1``) with the image
        columns among them replaced by their features."""
        stop = min(start + resid.shape[1], self.mask.shape[1])
        if stop <= start:
            return resid
        mask = self.mask[:, start:stop].to(resid.device)
        if not bool(mask.any()):
            return resid
        merged = resid.clone()
        merged[:, :stop - start] = torch.where(
            mask[..., None], self.values[:, start:stop].to(resid.device), resid[:, :stop - start])
        return merged
