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

    [[step]]
    kind = "kv_budget"             # headprobe.heads.retrieval.kv_budget.plan_kv_budget (+ plan_accuracy)
    name = "budget"
    from = "induction"             # an earlier scan step
    full_share = 0.2               # or threshold = 0.1
    sink = 4
    window = 64
    task = "induction_copy"        # optional: measure the plan vs random kv heads
    n_random = 2

    [report]
    top = 10
    threshold = 0.5

Steps run in the order written. One ``[[step]]`` array keeps that order: TOML does not keep
the relative order of arrays of tables with different names, so ``[[ablate]]`` / ``[[dose]]``
arrays are refused with a message saying so. Older files made only of ``[[scan]]`` tables
(no ``kind``) are still read, as scan steps in their order.

Keys of a scan step: ``scorer`` (required), ``name``, ``n``, ``seed``, ``batch_size``,
``params``, and ``task`` with ``task_options`` (a registered task whose prompts the scorer
takes instead of its default data, e.g. the ``retrieval`` scorer on ``bracket_copy``).
Keys of an ``ablate`` / ``dose`` step: ``task`` (required, a registered task),
``task_options``, either ``heads_from`` (with ``top`` and/or ``threshold``, ranked by the
column ``rank_by``, default ``score``; a dose step defaults to ``top = max(ks)``) or
``heads`` (``"18.6,17.3"`` or ``[[18, 6], [17, 3]]``),
``method`` (:data:`headprobe.interventions.METHODS`; default ``zero``), ``method_options``,
``n_random`` (default 10 for ablate, 5 for dose), ``random_from`` (``same_layers`` or
``uniform``), ``seed``, ``n_bootstrap`` (default 1000), ``batch_size`` and, for ``dose``,
``ks`` (required). Keys of a ``kv_budget`` step: ``from`` (required, an earlier scan step),
exactly one of ``threshold`` (kv heads scoring above it keep a full cache) and ``full_share``
(that share of kv heads, best first, keeps it), ``aggregate`` (``max`` or ``mean`` over the
query heads of a kv group; default ``max``), ``sink`` (default 4), ``window`` (default 32),
``context_length`` (where to report the memory saved; default: the task's longest prompt plus
its new tokens, else 1024, 4096 and 32768 tokens) and, to measure the plan with
:func:`headprobe.heads.retrieval.kv_budget.plan_accuracy`, ``task`` with ``task_options``, ``n_random``
(default 5), ``seed``, ``n_bootstrap`` and ``batch_size``. A task whose ``make_task`` takes a
``model`` (``niah``, ``ioi``, ``facts``) gets the recipe's model (so ``niah`` lengths count
the model's tokens); ``task_options`` cannot name one. :func:`load_recipe` checks all of this
before any model is loaded and raises :class:`~headprobe.errors.RecipeError` naming the step and
the problem.

Running it writes each step under ``<out>/<step name>/`` (a scan step's name is its scorer
unless it says otherwise) and rewrites ``summary.json`` after every step: the scans' top heads
and counts above the report threshold under ``scans``, the causal steps' headline numbers
(heads used, target delta with its 95% interval, mean and lowest random delta, share of random
sets as low; for dose the accuracy per k) under ``experiments``, a ``kv_budget`` step's plan
(full and streaming kv heads, memory saved, accuracies of the clean model, the plan and the
random kv-head sets with 95% intervals) under ``kv_budgets``, and the order of the steps
under ``steps``. A recipe killed half-way and run again with the same arguments skips the
steps already done under the same run key and resumes the interrupted scan per batch where its
scorer can (:mod:`headprobe.checkpoint`). A causal step's run key covers its parameters, the
heads it used (so a rerun scan that ranks heads differently reruns it), the model and the
task's fingerprint (tokenized prompts, answers and judge); a ``kv_budget`` step's covers its
parameters, the plan's full kv heads, the model and its task's fingerprint. A ``kv_budget``
step writes its plan under ``<out>/<step name>/`` in every format :mod:`headprobe.heads.retrieval.kv_budget`
knows: ``plan.json``, ``plan.csv``, ``duo_attention/`` and ``headkv.json`` (left out, with the
reason in the summary, when the scores cannot be HeadKV's: negative or NaN), plus
``accuracy.csv`` when it measures a task.
"""

from headprobe.recipes.format import STEP_KINDS, Recipe, Step, explicit_heads, load_recipe
from headprobe.recipes.run import build_task, run_recipe, select_heads, task_fingerprint

__all__ = ["STEP_KINDS", "Recipe", "Step", "build_task", "explicit_heads", "load_recipe",
           "run_recipe", "select_heads", "task_fingerprint"]
