"""headprobe: per-head scores, causal checks and interventions for transformer attention heads.

Importing headprobe loads no model, imports no torch and changes no global state: every name
below is looked up in :data:`_PUBLIC` (``{name: "module:attribute"}``) and its module is
imported the first time the name is used (PEP 562). Start with::

    from headprobe import load_model, scan
    model, spec = load_model("smollm2-135m-instruct")
    table = scan(model, "induction")
    table.top(5); table.heatmap(); table.save("runs/induction")

The public face, by what a notebook does:

Load a model
    :func:`load_model` (a packaged name, local folder, GGUF file, hub name or ``tiny:<kind>``
    -> ``(TransformerBridge, ModelSpec)``), :func:`available_models`, :func:`describe_model`,
    :class:`ModelSpec` (layers, heads, kv-head grouping, norms, hook names).
Prompts
    :class:`Text`, :class:`Chat`, :class:`ImagePrompt` (one prompt each), :class:`Batch`
    (padded token ids, positions, named spans) and :func:`encode_prompts`.
Score every head
    :func:`scan` (a registered scorer -> :class:`HeadTable`), :func:`list_scorers`,
    :func:`get_scorer`; :func:`scan_heads` (every head patched or ablated at once on a task's
    logit difference, the fast all-head scan); :func:`logit_attribution` (direct logit
    attribution of every component); :class:`HeadTable` (top heads, heatmap, save / load).
Generate and intervene
    :func:`generate` (KV-cached greedy decoding with hooks active), :func:`observe_attention`
    (generate and record every head's attention row per step), :func:`intervene` (a context
    manager that ablates or steers heads; its hooks are removed on exit);
    :class:`Head` (``(layer, head)``) and :class:`KVHead` (``(layer, kv_head)``).
Tasks
    :func:`get_task`, :func:`build_task` (sized to a model), :func:`list_tasks`,
    :class:`Task`, :class:`TaskItem`.
Causal experiments
    :func:`ablation_experiment` (target heads vs random head sets of the same size),
    :func:`dose_response` (top-k heads for several k), :class:`ExperimentResult`.
Patching
    :class:`PatchingEngine` (clean/corrupt pairs, baselines, metrics),
    :func:`activation_patch_heads`, :func:`path_patch`.
Recipes
    :func:`load_recipe`, :func:`run_recipe`, :class:`Recipe`.
Errors
    :class:`HeadprobeError` is the base of every error bad input causes;
    :class:`UnknownNameError` of every unknown name (:class:`UnknownModelError`,
    :class:`UnknownScorerError`, :class:`UnknownTaskError`); :class:`ModelUnavailableError`,
    :class:`HeadIndexError`, :class:`EmptyPromptsError`, :class:`ContextLengthError`,
    :class:`NonCausalModelError`, :class:`OutputPathError`, :class:`TaskError`,
    :class:`PromptFormatError`, :class:`InterventionError`, :class:`ScorerParamError`,
    :class:`RecipeError`, :class:`DataNotFoundError`.

Head-type helpers (the NIAH judge, the KV budget, the safety organism, ...) live in their
folder, ``headprobe.heads.<type>``; deeper modules stay importable by their full name.
"""

from __future__ import annotations

import importlib
from typing import Any

from headprobe.version import __version__

# Every public name and where it lives, grouped as in the docstring. Moving a name is one
# edit here.
_PUBLIC: dict[str, str] = {
    # Load a model
    "load_model": "headprobe.catalogue:load_model",
    "available_models": "headprobe.catalogue:available_models",
    "describe_model": "headprobe.models:describe_model",
    "ModelSpec": "headprobe.arch:ModelSpec",
    # Prompts
    "Text": "headprobe.inputs:Text",
    "Chat": "headprobe.inputs:Chat",
    "ImagePrompt": "headprobe.inputs:ImagePrompt",
    "Batch": "headprobe.inputs:Batch",
    "encode_prompts": "headprobe.inputs:encode_prompts",
    # Score every head
    "scan": "headprobe.registry:scan",
    "list_scorers": "headprobe.registry:list_scorers",
    "get_scorer": "headprobe.registry:get_scorer",
    "scan_heads": "headprobe.fastscan:scan_heads",
    "logit_attribution": "headprobe.scorers.dla:logit_attribution",
    "HeadTable": "headprobe.headtable:HeadTable",
    # Generate and intervene
    "generate": "headprobe.runtime.decode:generate",
    "observe_attention": "headprobe.runtime.observer:observe_attention",
    "intervene": "headprobe.interventions:intervene",
    "Head": "headprobe.types:Head",
    "KVHead": "headprobe.types:KVHead",
    # Tasks
    "get_task": "headprobe.registry:get_task",
    "build_task": "headprobe.tasks.build:build_task",
    "list_tasks": "headprobe.registry:list_tasks",
    "Task": "headprobe.tasks.base:Task",
    "TaskItem": "headprobe.tasks.base:TaskItem",
    # Causal experiments
    "ablation_experiment": "headprobe.experiments:ablation_experiment",
    "dose_response": "headprobe.experiments:dose_response",
    "ExperimentResult": "headprobe.experiments:ExperimentResult",
    # Patching
    "PatchingEngine": "headprobe.patching:PatchingEngine",
    "activation_patch_heads": "headprobe.patching:activation_patch_heads",
    "path_patch": "headprobe.patching:path_patch",
    # Recipes
    "load_recipe": "headprobe.recipes:load_recipe",
    "run_recipe": "headprobe.recipes:run_recipe",
    "Recipe": "headprobe.recipes:Recipe",
    # Errors
    "HeadprobeError": "headprobe.errors:HeadprobeError",
    "UnknownNameError": "headprobe.errors:UnknownNameError",
    "UnknownModelError": "headprobe.errors:UnknownModelError",
    "UnknownScorerError": "headprobe.errors:UnknownScorerError",
    "UnknownTaskError": "headprobe.errors:UnknownTaskError",
    "ModelUnavailableError": "headprobe.errors:ModelUnavailableError",
    "HeadIndexError": "headprobe.errors:HeadIndexError",
    "EmptyPromptsError": "headprobe.errors:EmptyPromptsError",
    "ContextLengthError": "headprobe.errors:ContextLengthError",
    "NonCausalModelError": "headprobe.errors:NonCausalModelError",
    "OutputPathError": "headprobe.errors:OutputPathError",
    "TaskError": "headprobe.errors:TaskError",
    "PromptFormatError": "headprobe.errors:PromptFormatError",
    "InterventionError": "headprobe.errors:InterventionError",
    "ScorerParamError": "headprobe.errors:ScorerParamError",
    "RecipeError": "headprobe.errors:RecipeError",
    "DataNotFoundError": "headprobe.errors:DataNotFoundError",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name (PEP 562)."""
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'headprobe' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
