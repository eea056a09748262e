"""Errors that headprobe raises for bad input.

Every error a user can cause by passing something wrong is a subclass of
:class:`HeadprobeError`, so that notebooks and the CLI can show one clear line instead of
a stack trace from deep inside torch. They also subclass the matching builtin (``ValueError``,
``KeyError``, ``IndexError``...) so that generic ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class HeadprobeError(Exception):
    """Base class of every error caused by input that headprobe cannot use."""


class UnknownNameError(HeadprobeError, KeyError):
    """A name (scorer, task, method, metric, step kind, head type, ...) that nothing is
    registered under; the message lists the registered names
    (:func:`headprobe.registry.unknown_name_message`)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class UnknownModelError(UnknownNameError, ValueError):
    """The model spec names no packaged model, local file, local directory or hub model (or
    a device / device map that cannot be used)."""


class ModelLoadError(HeadprobeError, RuntimeError):
    """A model's files are there but cannot be read (a malformed ``config.json``, a broken
    weights file); the message names the path and the first line of the cause."""


class ModelUnavailableError(HeadprobeError, RuntimeError):
    """The model spec is known but cannot be loaded here (package missing, offline hub)."""


class UnknownScorerError(UnknownNameError):
    """No scorer is registered under the given name."""


class HeadIndexError(HeadprobeError, IndexError):
    """A layer or head index lies outside the model."""


class EmptyPromptsError(HeadprobeError, ValueError):
    """A prompt set with no prompts (or a prompt with no tokens) was given."""


class ContextLengthError(HeadprobeError, ValueError):
    """A prompt is longer than the model's context window."""


class NonCausalModelError(HeadprobeError, ValueError):
    """A scorer that needs a causal (decoder) model was given an encoder."""


class OutputPathError(HeadprobeError, ValueError):
    """An output directory cannot be used (it is a file, or cannot be created)."""


class RecipeError(HeadprobeError, ValueError):
    """A recipe file is malformed."""


class RecipeNameError(UnknownNameError, RecipeError):
    """A recipe step names a step kind or method that nothing is registered under."""


class UnknownTaskError(UnknownNameError):
    """No task is registered under the given name."""


class DataNotFoundError(HeadprobeError, FileNotFoundError):
    """headprobe's data folder (or a file in it) is missing."""


class TaskError(HeadprobeError, ValueError):
    """A task cannot be used as asked (no prompts, answers that are not single tokens...)."""


class PromptPairError(HeadprobeError, ValueError):
    """Clean and corrupt prompts that cannot be paired (different token lengths...)."""


class MetricError(HeadprobeError, ValueError):
    """A metric came out NaN or infinite; the message names the prompt."""


class InterventionError(HeadprobeError, ValueError):
    """An intervention cannot be applied as asked (no heads, bad pattern, unknown method...)."""


class UnknownMethodError(UnknownNameError, InterventionError):
    """No intervention or fast-scan method is registered under the given name."""


class UnknownMetricError(UnknownNameError, ValueError):
    """No metric is registered under the given name."""


class ReducerError(HeadprobeError, RuntimeError):
    """A reducer edited the activation it was given (reducers must only read)."""


class OCRDataError(TaskError):
    """OCR samples the ``ocr`` scorer cannot use: an answer with no evidence box (missing,
    empty or covering no image patch), character boxes that do not match the answer, or not
    exactly one image per prompt."""


class PromptFormatError(HeadprobeError, ValueError):
    """A prompt item cannot be encoded as asked (no chat template, no processor, a span that
    is not in the text, placeholders that do not match the images...)."""


class ScorerNeedsError(HeadprobeError, ValueError):
    """The model cannot give a scorer what it needs (images, a chat template, ...)."""


class ScorerParamError(HeadprobeError, ValueError):
    """A scorer parameter has a value the scorer does not accept."""


class UsageError(HeadprobeError, ValueError):
    """A command-line value headprobe cannot use (a count below its minimum, bad KEY=VALUE)."""


class ImageGenerationError(HeadprobeError, ValueError):
    """Generation was asked for from an image prompt, which the decode step cannot do yet."""


class NoRetrievalError(HeadprobeError, RuntimeError):
    """No retrieval trial passed the gate (the model never answered), so no head can be
    scored; the message says how many trials ran and what the model answered."""


class AdapterMismatchError(HeadprobeError, ValueError):
    """A LoRA adapter does not fit the base model it is merged into (another base model, or
    a target layer of another shape); the message names the mismatch."""


class TokenSetError(HeadprobeError, ValueError):
    """An ordinal token set cannot be scored (fewer than 3 of its items are single tokens in
    the model's tokenizer, or it is unknown); the message names the set and what was dropped."""


class YearRangeError(HeadprobeError, ValueError):
    """A year asked of a dated-fact set lies outside the years its data covers; the message
    gives the covered range."""


class RayNotInstalledError(HeadprobeError, ImportError):
    """A Ray scan was asked for but ``ray`` is not importable."""


class ShardFailedError(HeadprobeError, RuntimeError):
    """A shard failed after its retries (the finished shards are checkpointed)."""


class ResultWriteError(HeadprobeError, OSError):
    """A result set could not be written (disk full, permission lost midway); the previous
    set in the folder is unchanged (:func:`headprobe.resultset.result_set`)."""


class ResultSetBusyError(ResultWriteError):
    """Another run is writing results into the same folder; the message names it (pid, start
    time, command line)."""


class PlantingError(HeadprobeError, ValueError):
    """A planted model cannot be built as asked (two planted heads in one kv group, a role
    whose prerequisite head is missing, a head outside the model); the message says what to
    change (:func:`headprobe.planting.planted_model`)."""
