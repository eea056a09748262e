"""The one scorer signature and the bookkeeping every scorer shares.

A scorer is a :class:`Scorer` record in its own module. Calling it::

    table = scorer(model, prompts=None, n=None, seed=0, batch_size=8, progress=True, **params)

checks the model, its needs and the parameters (the scorer's typed record,
:attr:`Scorer.params`: a frozen dataclass of :mod:`headprobe.scorers.params`, validated there
once; run options such as ``n`` or ``seed`` are never scorer parameters,
:data:`headprobe.options.RUN_OPTIONS`), builds the scorer's default data when no
prompts are given, times the run and wraps the result in a
:class:`~headprobe.headtable.HeadTable` whose metadata (:func:`headprobe.provenance.result_meta`)
records the model, the parameters, a fingerprint of the data, the seed and the headprobe
version.

A killed run can resume: ``scorer(model, ..., checkpoint_dir=out)`` keeps a
:class:`~headprobe.checkpoint.Checkpoint` under ``<out>/.checkpoints/``, keyed by the run's
parameters and data fingerprint. A scorer whose ``compute`` takes a ``checkpoint`` keyword
(:attr:`Scorer.resumes_per_batch`: the pattern scorers and ``sink``) saves its partial state
after every batch and skips finished batches when started again; the others restart.
:meth:`Scorer.plan` prepares a run without computing it, so the atlas and recipes can compare
its run key with a saved table's.

A scorer declares what it needs beyond a forward pass (:data:`headprobe.types.Need`) and
whether it is cheap enough for a CPU; the atlas and the CLI read these flags
(:func:`unmet_needs`), never a scorer's name.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.checkpoint import Checkpoint, run_key, run_key_fields
from headprobe.errors import NonCausalModelError, ScorerNeedsError
from headprobe.errors import ScorerParamError as ScorerParamError  # re-exported for scorers
from headprobe.headtable import HeadTable
from headprobe.models import describe_model
from headprobe.options import RUN_OPTIONS
from headprobe.provenance import Timer, result_meta
from headprobe.runtime.hooks import model_device
from headprobe.scorers.params import Params, as_dict, build
from headprobe.types import Need

# Needs that make a scorer impossible to run (``gpu`` is a budget hint: the atlas skips such a
# scorer on a CPU, but calling it directly still runs).
HARD_NEEDS: frozenset[str] = frozenset({"generation", "chat_template", "images"})


def unmet_needs(model: Any, spec: ModelSpec, needs: frozenset[Need] | frozenset[str]
                ) -> dict[str, str]:
    """``{need: reason}`` for each of ``needs`` that ``model`` cannot meet.

    - ``images``: the model has no processor (``model.headprobe_processor``);
    - ``chat_template``: its tokenizer has no chat template;
    - ``generation``: it is not a causal (decoder) model;
    - ``gpu``: it is not on a CUDA device;
    - ``pairs``: task data with clean/corrupt prompt pairs, which any model can take.
    """
    reasons: dict[str, str] = {}
    if "images" in needs and getattr(model, "headprobe_processor", None) is None:
        reasons["images"] = (f"needs images, but {spec.name} has no image processor (load a "
                             "vision-language model)")
    if "chat_template" in needs and getattr(getattr(model, "tokenizer", None), "chat_template",
                                            None) is None:
        reasons["chat_template"] = f"needs a chat template, but {spec.name}'s tokenizer has none"
    if "generation" in needs and not spec.causal:
        reasons["generation"] = f"needs generation, but {spec.name} is not a causal model"
    if "gpu" in needs and model_device(model).type != "cuda":
        reasons["gpu"] = (f"needs a GPU-sized budget, but {spec.name} is on "
                          f"{model_device(model).type}")
    return reasons


@dataclass
class ScoreResult:
    """What a scorer's ``compute`` returns.

    Attributes:
        score: [L, H] the head score.
        columns: extra [L, H] columns for the table.
        meta: extra metadata (e.g. counts, thresholds, per-domain summaries).
    """

    score: torch.Tensor
    columns: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScorerData:
    """The prepared data of one run: whatever ``compute`` needs, plus a fingerprint."""

    payload: Any
    fingerprint: str
    n_prompts: int
    description: str


# prepare(model, spec, prompts_or_None, n, seed, params) -> ScorerData
Prepare = Callable[[Any, ModelSpec, Any, int, int, dict[str, Any]], ScorerData]
# compute(model, spec, data, params, batch_size, progress) -> ScoreResult
Compute = Callable[[Any, ModelSpec, ScorerData, dict[str, Any], int, bool], ScoreResult]


@dataclass(frozen=True)
class Scorer:
    """A registered head scorer.

    Attributes:
        name: registry name (also the file stem of saved results).
        description: one line for ``headprobe`` listings and reports.
        reference: the paper or source that defines the score.
        prepare: builds the default data (or tokenizes the given prompts).
        compute: runs the model and returns a :class:`ScoreResult`; ``prepare`` and
            ``compute`` receive the validated parameters as a plain ``{name: value}`` dict.
        prompts: what the scorer's ``prompts`` argument may be (None: its default data);
            every registered scorer says it (``headprobe scorers NAME`` prints it).
        params: the scorer's parameter record, a frozen :class:`~headprobe.scorers.params.Params`
            dataclass (types, defaults, help, bounds); no field may be named like a run
            option (:data:`headprobe.options.RUN_OPTIONS`).
        default_n: default number of prompts.
        requires_causal: refuse encoder (non-causal) models.
        cheap: cheap enough on a CPU to run in ``headprobe atlas`` by default.
        needs: what the scorer needs beyond a forward pass (:data:`headprobe.types.Need`:
            ``generation``, ``chat_template``, ``images``, ``gpu``, ``pairs``); see
            :func:`unmet_needs`.
    """

    name: str
    description: str
    reference: str
    prepare: Prepare
    compute: Compute
    prompts: str = ""
    params: type[Params] = Params
    default_n: int = 32
    requires_causal: bool = True
    cheap: bool = True
    needs: frozenset[Need] = frozenset()

    def __post_init__(self) -> None:
        if not (isinstance(self.params, type) and issubclass(self.params, Params)
                and dataclasses.is_dataclass(self.params)):
            raise TypeError(f"scorer {self.name!r}: params must be a Params dataclass, got "
                            f"{self.params!r}")
        fields = dataclasses.fields(self.params)
        clash = sorted({item.name for item in fields} & RUN_OPTIONS)
        if clash:
            raise TypeError(f"scorer {self.name!r}: parameters {clash} are named like run "
                            f"options ({', '.join(sorted(RUN_OPTIONS))}); rename them")
        undocumented = sorted(item.name for item in fields if not item.metadata.get("help"))
        if undocumented:
            raise TypeError(f"scorer {self.name!r}: parameters {undocumented} have no help "
                            "(make them with headprobe.scorers.params.param)")
        self.params()  # the defaults themselves must validate

    @property
    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` of the scorer's parameters (read-only: from :attr:`params`)."""
        return as_dict(self.params())

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` validated through :attr:`params` with the defaults merged in, as a plain
        dict; :class:`~headprobe.errors.ScorerParamError` (one line) for an unknown or renamed
        name or a value that does not fit."""
        return as_dict(build(self.params, params, owner=f"scorer {self.name!r}"))

    def unmet(self, model: Any, spec: ModelSpec | None = None) -> dict[str, str]:
        """``{need: reason}`` for the needs ``model`` cannot meet (causality included)."""
        spec = spec if spec is not None else describe_model(model)
        reasons = unmet_needs(model, spec, self.needs)
        if self.requires_causal and not spec.causal:
            reasons["causal"] = (f"scorer {self.name!r} needs a causal (decoder) model; "
                                 f"{spec.name} ({spec.model_type}) is an encoder")
        return reasons

    @property
    def resumes_per_batch(self) -> bool:
        """Whether ``compute`` takes a ``checkpoint`` keyword (a
        :class:`~headprobe.checkpoint.Checkpoint`) and so resumes a killed run per batch;
        other scorers restart from the beginning."""
        return "checkpoint" in inspect.signature(self.compute).parameters

    def plan(
        self,
        model: Any,
        prompts: Any = None,
        *,
        n: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        **params: Any,
    ) -> ScorerRun:
        """Check the model, needs and parameters and prepare the data; the returned
        :class:`ScorerRun` knows the run key (so a caller can tell whether a saved table is
        this run's) and :meth:`ScorerRun.run` computes the table."""
        spec = describe_model(model)
        unmet = self.unmet(model, spec)
        if "causal" in unmet:
            raise NonCausalModelError(unmet["causal"])
        hard = {need: reason for need, reason in unmet.items() if need in HARD_NEEDS}
        if hard:
            raise ScorerNeedsError(f"scorer {self.name!r} " + "; ".join(hard.values()))
        merged = self.check_params(params)
        if n is not None and n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        timer = Timer()
        data = self.prepare(model, spec, prompts, n or self.default_n, seed, merged)
        timer.lap("prepare")
        fields = run_key_fields(name=self.name, spec=spec, params=merged, seed=seed,
                                n=n or self.default_n, batch_size=batch_size,
                                fingerprint=data.fingerprint)
        return ScorerRun(self, model, spec, data, merged, seed, batch_size, timer, fields)

    def __call__(
        self,
        model: Any,
        prompts: Any = None,
        *,
        n: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
        fresh: bool = False,
        echo: Callable[[str], None] | None = None,
        **params: Any,
    ) -> HeadTable:
        """Score every head: ``plan(...).run(...)``.

        ``checkpoint_dir``: keep a checkpoint under ``<checkpoint_dir>/.checkpoints/`` so a
        killed run started again with the same arguments resumes (per batch where
        :attr:`resumes_per_batch`); ``fresh`` discards a stored checkpoint; ``echo`` receives
        the "resuming" / "starting afresh" lines (default: a log record).
        """
        return self.plan(model, prompts, n=n, seed=seed, batch_size=batch_size,
                         **params).run(progress=progress, checkpoint_dir=checkpoint_dir,
                                       fresh=fresh, echo=echo)


@dataclass
class ScorerRun:
    """A checked, prepared scorer run (from :meth:`Scorer.plan`).

    Attributes:
        scorer, model, spec: what runs on what.
        data: the prepared data.
        params: the scorer parameters (defaults merged in).
        seed, batch_size: as given.
        timer: started before ``prepare``.
        key_fields: the :func:`~headprobe.checkpoint.run_key_fields` of this run.
    """

    scorer: Scorer
    model: Any
    spec: ModelSpec
    data: ScorerData
    params: dict[str, Any]
    seed: int
    batch_size: int
    timer: Timer
    key_fields: dict[str, Any]

    @property
    def key(self) -> str:
        """The run key (:func:`~headprobe.checkpoint.run_key` of :attr:`key_fields`)."""
        return run_key(self.key_fields)

    def run(self, *, progress: bool = True, checkpoint_dir: str | Path | None = None,
            fresh: bool = False, echo: Callable[[str], None] | None = None) -> HeadTable:
        """Compute the table; with ``checkpoint_dir`` a resumable scorer saves its partial
        state after every batch and resumes from it (see :meth:`Scorer.__call__`)."""
        scorer = self.scorer
        checkpoint = None
        if checkpoint_dir is not None and scorer.resumes_per_batch:
            checkpoint = Checkpoint(checkpoint_dir, scorer.name, self.key_fields, fresh=fresh,
                                    echo=echo)
        if checkpoint is not None:
            result = scorer.compute(self.model, self.spec, self.data, self.params,
                                    self.batch_size, progress,
                                    checkpoint=checkpoint)  # type: ignore[call-arg]
        else:
            result = scorer.compute(self.model, self.spec, self.data, self.params,
                                    self.batch_size, progress)
        self.timer.lap("compute")
        meta = result_meta(
            kind="scorer", name=scorer.name, spec=self.spec, params=self.params,
            fingerprint=self.data.fingerprint, n_prompts=self.data.n_prompts, seed=self.seed,
            timer=self.timer, description=scorer.description, reference=scorer.reference,
            batch_size=self.batch_size, data=self.data.description,
            run_key=self.key, run_key_fields=self.key_fields)
        meta.update(result.meta)  # the scorer's own keys (counts, summaries) come last
        table = HeadTable.from_grid(result.score, self.spec, columns=result.columns, meta=meta)
        if checkpoint is not None:
            checkpoint.finish()
        return table
