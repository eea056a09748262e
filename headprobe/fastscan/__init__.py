"""Fast all-head scans: every head's intervention from the cached residual below its layer,
a layer's heads batched as stacked copies of the prompts.

- :mod:`headprobe.fastscan.patching`: activation patching and zero / mean / scaled-output /
  uniform-attention ablation of every head, scored on a task's logit difference
  (:func:`scan_heads`, with the shared clean/corrupt prefix reused; :func:`loop_scan` is the
  plain one-forward-per-head reference);
- :mod:`headprobe.fastscan.effects`: per-prompt ``KL(p_base || p_ablated)`` of the next-token
  distribution for every head (:func:`head_effects`; Ships, Zhou et al. 2025), with
  :func:`loop_head_effects` as its reference;
- :mod:`headprobe.fastscan.copies`: the per-copy intervention hooks both use.
"""

from headprobe.fastscan.effects import head_effects, kl_divergence, loop_head_effects
from headprobe.fastscan.patching import (
    ScanData,
    loop_scan,
    prepare_scan_data,
    scan_heads,
    shared_prefix_length,
)

__all__ = ["ScanData", "head_effects", "kl_divergence", "loop_head_effects", "loop_scan",
           "prepare_scan_data", "scan_heads", "shared_prefix_length"]
