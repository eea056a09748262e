"""Scripted head-discovery recipes: small TOML files that the CLI runs.

A recipe names a model and an ordered list of steps: scans that score every head, then causal
checks of the best heads of an earlier scan against random head sets of the same size::

    name = "induction-heads"
    description = "..."
    model = "smollm2-135m-instruct"

    [[step]]
    kind = "scan"                  # score every head with one scorer
    scorer = "induction"
    n = 32
    seed = 0
    params = { seq_len = 50 }

    [[step]]
    kind = "ablate"                # headprobe.experiments.ablation_experiment
    name = "induction_ablation"    # the step's folder and summary key (default: its kind)
    task = "induction_copy"
    task_options = { n = 48 }
    heads_from = "induction"       # an earlier scan step (its name: the scorer by default)
    top = 6                        # and/or threshold = 0.5; or heads = "18.6,17.3"
    method = "zero"
    n_random = 10

    [[step]]
    kind = "dose"                  # headprobe.experiments.dose_response
    task = "induction_copy"
    heads_from = "induction"
    ks = [1, 2, 4, 6]              # top defaults to max(ks)

    [report]
    top = 10
    threshold = 0.5

    [small]                        # the same recipe at a test-sized setting (optional)
    "*" = { n_random = 1, n_bootstrap = 20, task_options = { n = 4 } }
    induction = { n = 2 }          # step name -> options replacing the step's own

Step kinds are a registry (:mod:`headprobe.recipes.steps`): ``scan``, ``ablate`` and ``dose``
are generic (:mod:`headprobe.recipes.generic`); a head type adds kinds through its
``HeadType.steps`` (``headprobe/heads/<type>/__init__.py``), each a
:class:`~headprobe.recipes.steps.StepKind` with its keys, checker, runner and the files it
saves, its module documenting its keys. :func:`step_kinds` lists them all; an unknown kind is a
one-line :class:`~headprobe.errors.RecipeError` naming every registered kind.

Steps run in the order written. One ``[[step]]`` array keeps that order: TOML does not keep
the relative order of arrays of tables with different names, so ``[[ablate]]`` / ``[[dose]]``
arrays are refused with a message saying so. Older files made only of ``[[scan]]`` tables
(no ``kind``) are still read, as scan steps in their order.

Keys of a scan step: ``scorer`` (required), ``name``, ``n``, ``seed``, ``batch_size``,
``params``, and ``task`` with ``task_options`` (a registered task whose prompts the scorer
takes instead of its default data, e.g. the ``retrieval`` scorer on ``bracket_copy``).
Keys of an ``ablate`` / ``dose`` step: ``task`` (required, a registered task),
``task_options``, either ``heads_from`` (an earlier step with a head table: a scan, or a head
type's table step; with ``top`` and/or ``threshold``, ranked by the column ``rank_by``,
default ``score``; a dose step defaults to ``top = max(ks)``) or
``heads`` (``"18.6,17.3"`` or ``[[18, 6], [17, 3]]``),
``method`` (:data:`headprobe.interventions.METHODS`; default ``zero``), ``method_options``,
``n_random`` (default 10 for ablate, 5 for dose), ``random_from`` (``same_layers``,
``uniform`` or ``matched``: random heads matched head by head on another score,
:mod:`headprobe.experiments.matching`, with ``match_scorer`` = an earlier step with a head
table or a scorer run on its default data, ``match_tolerance``, ``match_column`` (default
``score``) and ``match_within`` (``model``, ``layer`` or ``kv_group``)), ``seed``, ``n_bootstrap``
(default 1000), ``batch_size`` and, for ``dose``,
``ks`` (required). A task whose ``make_task`` takes a ``model`` (``niah``, ``ioi``,
``facts``) gets the recipe's model (so ``niah`` lengths count the model's tokens);
``task_options`` cannot name one. :func:`load_recipe` checks all of this (and each head-type
kind's own checks) before any model is loaded and raises :class:`~headprobe.errors.RecipeError`
naming the step and the problem.

``[small]`` (optional): the recipe at a test-sized setting, used by
``load_recipe(path, small=True)`` and ``headprobe recipe PATH --small``. It maps step names to
options that replace the step's own (a table option such as ``params`` or ``task_options`` is
merged key by key); its ``"*"`` entry applies to every step that writes the option, before the
per-step entries. The merged steps are validated like any other, the summary says
``"small": true``, and the run keys differ from the full run's, so a small run never passes
for a full one. Every shipped recipe has one, and the tests run each recipe at it.

Running it writes each step under ``<out>/<step name>/`` (a scan step's name is its scorer
unless it says otherwise) and rewrites ``summary.json`` after every step: the scans' top heads
and counts above the report threshold under ``scans``, the causal steps' headline numbers
(heads used, target delta with its 95% interval, mean and lowest random delta, share of random
sets as low; for dose the accuracy per k) under ``experiments``, a head-type step's entry
under its kind's section, and the order of the steps under ``steps``. A
recipe killed half-way and run again with the same arguments skips the steps already done
under the same run key and resumes the interrupted scan per batch where its scorer can
(:mod:`headprobe.checkpoint`). A causal step's run key covers its parameters, the heads it
used (so a rerun scan that ranks heads differently reruns it), the model and the task's
fingerprint (tokenized prompts, answers and judge).
"""

from headprobe.recipes.format import Recipe, Step, apply_small, explicit_heads, load_recipe
from headprobe.recipes.run import run_recipe
from headprobe.recipes.steps import (
    StepContext,
    StepKind,
    StepOutput,
    build_task,
    get_step_kind,
    select_heads,
    step_kinds,
    task_fingerprint,
)

__all__ = ["Recipe", "Step", "StepContext", "StepKind", "StepOutput", "apply_small",
           "build_task", "explicit_heads", "get_step_kind", "load_recipe", "run_recipe",
           "select_heads", "step_kinds", "task_fingerprint"]
