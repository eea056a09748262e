"""The ``headprobe`` command line.

Subcommands: ``models`` (what can be loaded here), ``scorers``, ``scan``, ``atlas``,
``ablate`` (ablation experiment against random heads), ``dose`` (dose-response: the top-k heads
for several k against random k-sets), ``validate`` (each scorer against heads of known
function, :mod:`headprobe.validate.command`) and ``recipe``. Every command that
loads a model takes ``--model``, ``--dtype`` and ``--device`` and says which dtype and
device it ran with. ``scan``, ``atlas`` and ``recipe`` resume a run killed half-way when
started again with the same arguments and ``--out`` (checkpoints in
``<out>/.checkpoints/``, :mod:`headprobe.checkpoint`; ``--fresh`` starts over). ``scan
activation_patching|ablation_scan --ray [ADDRESS]`` shards the all-head scan over Ray workers
(:mod:`headprobe.distributed`; no ADDRESS: a new local Ray instance). Errors caused
by input (unknown model or scorer, bad count, bad output path...) are
:class:`~headprobe.errors.HeadprobeError` subclasses: :func:`main` prints them as one line
``headprobe: error: ...`` and exits with status 2. ``--quiet`` turns progress bars off.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headprobe.errors import HeadprobeError, InterventionError, UsageError
from headprobe.options import ControlOptions
from headprobe.registry import task_maker
from headprobe.types import Head

DTYPES = ("float32", "bfloat16", "float16")
# Interventions that need a tensor option cannot be run from the command line.


# ---------------------------------------------------------------------------------------------
# Shared pieces: values, KEY=VALUE options, counts, model loading


def parse_value(text: str) -> Any:
    """``"3" -> 3``, ``"1e-5" -> 1e-05``, ``"true"``/``"false"`` -> bool, else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def parse_key_values(pairs: Sequence[str], *, option: str = "--param") -> dict[str, Any]:
    """``["seq_len=8", "factor=1e-5"] -> {"seq_len": 8, "factor": 1e-05}`` (later wins).

    :class:`UsageError` naming ``option`` when a pair has no ``=`` or no key.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} takes KEY=VALUE (e.g. {option} seq_len=8), got {pair!r}")
        values[key.strip()] = parse_value(raw.strip())
    return values


def scorer_params(scorer: Any, pairs: Sequence[str]) -> dict[str, Any]:
    """``--param KEY=VALUE`` pairs read by the types of ``scorer``'s parameter record
    (:func:`headprobe.scorers.params.parse_text`: ints, floats, bools, ``none``, comma-separated
    or JSON lists, choices), checked together through the record (later pairs win).

    Raises:
        UsageError: a pair without ``=``; ScorerParamError: an unknown name or a bad value.
    """
    from headprobe.scorers.params import parse_text

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param takes KEY=VALUE (e.g. --param seq_len=8), got {pair!r}")
        values[key.strip()] = parse_text(scorer.params, key.strip(), raw,
                                         owner=f"scorer {scorer.name!r}")
    scorer.check_params(values)
    return values


_MINIMUMS = {"n": 1, "batch_size": 1, "top": 1, "n_random": 0, "n_bootstrap": 0,
             "ray_workers": 1}


def check_counts(args: argparse.Namespace) -> None:
    """:class:`UsageError` for a count option below its minimum (``--n 0``, ``--top 0``...)."""
    for name, minimum in _MINIMUMS.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def _load(spec: str, *, device: str | None = None, dtype: str | None = None,
          **placement: Any) -> tuple[Any, Any]:
    """Load ``spec`` as ``(bridge, ModelSpec)`` (the one loading seam; tests replace it).

    ``dtype``/``device`` ``None`` leave the choice to :func:`headprobe.catalogue.load_model`
    (fp32 on the CPU, bf16 on CUDA); ``placement``: ``device_map`` / ``offload_folder``.
    """
    from headprobe.catalogue import load_model

    return load_model(spec, device=device, dtype=dtype, **placement)


def placement_options(args: argparse.Namespace) -> dict[str, Any]:
    """``device_map`` / ``offload_folder`` from ``--device-map`` / ``--offload-folder`` (only
    those given): a strategy name, or a JSON object ``{module path: device}``."""
    options: dict[str, Any] = {}
    device_map = getattr(args, "device_map", None)
    if device_map is not None:
        if device_map.lstrip().startswith("{"):
            try:
                device_map = json.loads(device_map)
            except json.JSONDecodeError as error:
                raise UsageError(f"--device-map is not valid JSON: {error}") from None
        options["device_map"] = device_map
    if getattr(args, "offload_folder", None) is not None:
        if device_map is None:
            raise UsageError("--offload-folder needs --device-map")
        options["offload_folder"] = args.offload_folder
    return options


def ray_workers(args: argparse.Namespace) -> dict[str, Any]:
    """The Ray workers ``--ray [ADDRESS]`` / ``--ray-workers`` ask for, each loading
    ``--model`` with the command's ``--device``, ``--dtype`` and placement
    (:mod:`headprobe.distributed`)."""
    return {"model_name": args.model, "address": args.ray or None,
            "num_workers": args.ray_workers,
            "load_options": {"device": args.device, "dtype": args.dtype,
                             **placement_options(args)}}


def _load_from(args: argparse.Namespace, spec: str) -> tuple[Any, Any]:
    """:func:`_load` with the command's ``--device``, ``--dtype`` and placement; prints what
    was loaded."""
    model, model_spec = _load(spec, device=args.device, dtype=args.dtype,
                              **placement_options(args))
    print(f"model {model_spec.name} · {precision(model)}")
    return model, model_spec


def precision(model: Any) -> str:
    """``"float32 on cpu"``: the parameter dtype and device of a loaded bridge."""
    from headprobe.runtime.hooks import model_device, model_dtype

    return f"{str(model_dtype(model)).removeprefix('torch.')} on {model_device(model)}"


# ---------------------------------------------------------------------------------------------
# models, scorers, scan, atlas, recipe


def cmd_models(args: argparse.Namespace) -> int:
    """List the packaged models, whether they are installed and cached."""
    from headprobe.catalogue import available_models
    from headprobe.sources import cache_dir

    print(f"{'name':24} {'installed':9} {'cached':6}  description")
    for row in available_models():
        print(f"{row['name']:24} {('yes' if row['installed'] else 'no'):9} "
              f"{('yes' if row['cached'] else 'no'):6}  {row['description']}")
        if row["install"]:
            print(f"{'':42}install: {row['install']}")
    print("\nAlso accepted: a local .gguf file, a local Hugging Face model folder, or a hub name "
          f"(online only). Cache: {cache_dir()}")
    return 0


def describe_scorer(scorer: Any) -> str:
    """``headprobe scorers NAME``: the scorer's line, reference, what its prompts may be and
    each parameter with its type, default and help."""
    from headprobe.scorers.params import describe

    lines = [f"{scorer.name}: {scorer.description}", f"reference: {scorer.reference}",
             f"prompts: {scorer.prompts or '(not described)'}", f"default n: {scorer.default_n}"]
    needs = sorted(scorer.needs)
    if needs:
        lines.append("needs: " + ", ".join(needs))
    infos = describe(scorer.params)
    lines.append("parameters (--param KEY=VALUE):" if infos else "parameters: none")
    for info in infos:
        lines.append(f"  {info.name}: {info.type} = {info.default!r}")
        lines.append(f"      {info.help}")
    return "\n".join(lines)


def cmd_scorers(args: argparse.Namespace) -> int:
    """List the registered scorers with what each needs (generation, GPU...); with a name,
    that scorer's parameters (type, default, help) and what its prompts may be."""
    from headprobe.registry import get_scorer, list_scorers

    if args.name is not None:
        print(describe_scorer(get_scorer(args.name)))
        return 0
    for name in list_scorers():
        scorer = get_scorer(name)
        flags = [] if scorer.cheap else ["not in atlas: slow on CPU"]
        needs = sorted(getattr(scorer, "needs", ()) or ())
        if needs:
            flags.append("needs " + ", ".join(needs))
        suffix = f" ({'; '.join(flags)})" if flags else ""
        print(f"{name:18} {scorer.description}{suffix}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    """Score every head with one scorer; write the table files."""
    from headprobe.headtable import ensure_output_dir
    from headprobe.registry import get_scorer

    check_counts(args)
    scorer = get_scorer(args.scorer)  # fail before loading the model
    params = scorer_params(scorer, args.param)
    out = ensure_output_dir(args.out)
    if args.ray is not None:  # the scorer's scan sharded by headprobe.distributed, not by it
        from headprobe.distributed import ray_scorer

        scorer = ray_scorer(scorer, **ray_workers(args), shard_by=args.shard_by,
                            checkpoint_dir=out, checkpoint_name=f"{scorer.name}_ray",
                            fresh=args.fresh, echo=print)
        print(f"sharding over {args.ray_workers} Ray workers by {args.shard_by} "
              f"({args.ray or 'local Ray instance'})")
    model, _ = _load_from(args, args.model)
    table = scorer(model, n=args.n, seed=args.seed, batch_size=args.batch_size,
                   progress=not args.quiet, checkpoint_dir=out, fresh=args.fresh, echo=print,
                   **params)
    table.save(out)
    print(table.top(args.top)[["layer", "head", "kv_head", "score"]].to_string(index=False))
    print(f"wrote {out}/{scorer.name}.csv|parquet|html and {out}/meta.json "
          f"({table.meta['timings_s']['total']} s)")
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    """Run every cheap scorer (or ``--scorers``) and write one HTML report."""
    from headprobe.atlas import build_atlas
    from headprobe.headtable import ensure_output_dir
    from headprobe.registry import get_scorer

    check_counts(args)
    names = [name.strip() for name in args.scorers.split(",")] if args.scorers else None
    for name in names or []:
        get_scorer(name)
    beside = None
    if args.validation is not None:
        from headprobe.validate.report import scorer_figures

        beside = scorer_figures(args.validation)
    out = ensure_output_dir(args.out)
    model, _ = _load_from(args, args.model)
    result = build_atlas(model, out, scorers=names, n=args.n, seed=args.seed,
                         batch_size=args.batch_size, progress=not args.quiet,
                         fresh=args.fresh, echo=print, beside=beside)
    for table in result.tables:
        best = table.top(3)
        heads = ", ".join(f"L{r.layer}H{r.head} {r.score:.2f}" for r in best.itertuples())
        print(f"{table.scorer:16} {heads}")
    for name, reason in result.skipped.items():
        print(f"{name:16} skipped: {reason}")
    print(f"wrote {result.report} ({result.seconds:.1f} s)")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    """Run a head-discovery recipe (TOML)."""
    from headprobe.recipes import load_recipe, run_recipe

    recipe = load_recipe(args.path, small=args.small)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    model, _ = _load_from(args, args.model or recipe.model)
    run_recipe(recipe, model, out, progress=not args.quiet, fresh=args.fresh)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# ablate


def resolve_heads(text: str, top: int | None) -> tuple[list[Head], str]:
    """Heads from ``--heads``/``--top``, and a one-line description of where they came from.

    ``text`` is a ``LAYER.HEAD,...`` list or a folder / file written by ``HeadTable.save``
    (then the ``top`` best heads, 5 by default).
    """
    from headprobe.experiments import parse_heads
    from headprobe.headtable import HeadTable

    if top is not None and top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    path = Path(text)
    if path.exists():
        try:
            if path.is_dir():
                table = HeadTable.load(path)
            elif path.name == "meta.json":
                table = HeadTable.load(path.parent)
            else:
                table = HeadTable.load(path.parent, scorer=path.stem)
        except FileNotFoundError as error:
            raise InterventionError(
                f"--heads {text}: not a head table written by HeadTable.save ({error})"
            ) from error
        k = 5 if top is None else top
        return table.heads(k=k), f"top {k} heads of {table.scorer} ({path})"
    if "/" in text or text.endswith((".parquet", ".csv", ".json")):
        raise InterventionError(f"--heads {text}: no such file or folder")
    heads = parse_heads(text)
    if top is not None:
        heads = heads[:top]
    return heads, "given list"


def _make_task(name: str, model: Any, n: int | None, seed: int) -> Any:
    """The registered task ``name`` built for ``model`` (:func:`headprobe.tasks.build.build_task`:
    ``n`` and ``seed`` where its ``make_task`` takes them, the model where it takes one)."""
    from headprobe.tasks.build import build_task

    return build_task(name, model, n=n, seed=seed)


def cmd_ablate(args: argparse.Namespace) -> int:
    """Ablate heads on a task and compare with random head sets; print the table."""
    from headprobe.experiments import ablation_experiment
    from headprobe.headtable import ensure_output_dir

    check_counts(args)
    heads, source = resolve_heads(args.heads, args.top)
    options = parse_key_values(args.option, option="--option")
    task_maker(args.task)  # an unknown task fails before loading the model
    out = ensure_output_dir(args.out) if args.out else None
    judge, resume = None, {}
    if args.ray is not None:  # the conditions judged on Ray workers (headprobe.distributed)
        from headprobe.distributed import import_ray, ray_conditions_judge

        import_ray()  # a clear error before loading the model
        judge = ray_conditions_judge(**ray_workers(args))
        if out is not None:  # each judged condition kept: a restarted run resumes
            resume = {"checkpoint_dir": out, "fresh": args.fresh, "echo": print}
    match_source = _match_source(args)
    model, spec = _load_from(args, args.model)
    task = _make_task(args.task, model, args.n, args.seed)
    result = ablation_experiment(
        model, task, heads, method=args.method, batch_size=args.batch_size,
        progress=not args.quiet, method_options=options, judge=judge, **resume,
        **control_options(args, _match_on(args, match_source, model)).kwargs(),
    )
    summary = result.summary
    print(f"{spec.name} · task {task.name} ({len(task)} prompts) · method {args.method}")
    print(f"heads ({source}): {result.meta['heads']}")
    columns = ["condition", "heads", "accuracy", "delta", "delta_ci_low", "delta_ci_high"]
    if "match" in summary:  # matched controls: each row's scores on the matched score
        columns.append("match_scores")
        print(f"controls matched on {summary['match']['label']} within "
              f"{summary['match']['tolerance']:g} ({summary['match']['within']})")
    print(result.table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    low, high = summary["target_delta_ci"]
    line = (f"baseline {summary['baseline_accuracy']:.3f} · target delta "
            f"{summary['target_delta']:+.3f} [{low:+.3f}, {high:+.3f}]")
    if "mean_random_delta" in summary:
        line += (f" · mean random delta {summary['mean_random_delta']:+.3f} · share of random "
                 f"sets as low: {summary['share_random_as_low']:.2f}")
    print(line)
    if out is not None:
        folder = result.save(out)
        print(f"wrote {folder}/ablation.csv, ablation.html, meta.json")
    return 0


def control_options(args: argparse.Namespace, match: Any = None) -> ControlOptions:
    """The random-set controls ``--n-random``, ``--random-from``, ``--n-bootstrap`` and
    ``--seed`` ask for (``match``: the MatchOn of matched controls)."""
    return ControlOptions(n_random=args.n_random, random_from=args.random_from,
                          n_bootstrap=args.n_bootstrap, seed=args.seed, match=match)


def _match_source(args: argparse.Namespace) -> Any:
    """What ``--match-scorer`` names (a saved head table, or a registered scorer), checked
    before the model loads; ``None`` unless ``--random-from matched``."""
    from headprobe.headtable import HeadTable
    from headprobe.registry import get_scorer

    given = args.match_scorer is not None or args.match_tolerance is not None
    if args.random_from != "matched":
        if given:
            raise UsageError("--match-scorer / --match-tolerance need --random-from matched")
        return None
    if args.match_scorer is None or args.match_tolerance is None:
        raise UsageError("--random-from matched needs --match-scorer NAME (a scorer, or a "
                         "folder written by HeadTable.save) and --match-tolerance X")
    if Path(args.match_scorer).exists():
        return HeadTable.load(args.match_scorer)
    return get_scorer(args.match_scorer)  # an unknown scorer fails before the model loads


def _match_on(args: argparse.Namespace, source: Any, model: Any) -> Any:
    """The MatchOn of ``--random-from matched`` (the scorer run on its default data with
    ``--seed``), or ``None``."""
    from headprobe.experiments import MatchOn
    from headprobe.headtable import HeadTable

    if source is None:
        return None
    table = source if isinstance(source, HeadTable) else source(
        model, seed=args.seed, progress=not args.quiet)
    return MatchOn.from_table(table, args.match_column, tolerance=args.match_tolerance,
                              within=args.match_within)


def parse_ks(text: str) -> list[int]:
    """``"1,2,4,8" -> [1, 2, 4, 8]``; :class:`UsageError` unless every k is an integer >= 1."""
    ks: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            k = 0
        if k < 1:
            raise UsageError(f"--ks takes integers >= 1 separated by commas (e.g. 1,2,4,8), "
                             f"got {text!r}")
        ks.append(k)
    if not ks:
        raise UsageError("--ks is empty: give the k values, e.g. --ks 1,2,4,8")
    return sorted(set(ks))


def cmd_dose(args: argparse.Namespace) -> int:
    """Ablate the top-k heads for several k and random k-sets; print accuracy against k."""
    import pandas as pd

    from headprobe.experiments import dose_response
    from headprobe.headtable import ensure_output_dir

    check_counts(args)
    ks = parse_ks(args.ks)
    top = args.top if args.top is not None else (max(ks) if Path(args.heads).exists() else None)
    heads, source = resolve_heads(args.heads, top)
    if max(ks) > len(heads):
        raise UsageError(f"--ks goes up to {max(ks)} but --heads gives {len(heads)} heads "
                         f"({source}); lower --ks or give more heads")
    options = parse_key_values(args.option, option="--option")
    task_maker(args.task)  # an unknown task fails before loading the model
    out = ensure_output_dir(args.out) if args.out else None
    model, spec = _load_from(args, args.model)
    task = _make_task(args.task, model, args.n, args.seed)
    result = dose_response(
        model, task, heads, ks=ks, method=args.method, batch_size=args.batch_size,
        progress=not args.quiet, method_options=options, **control_options(args).kwargs(),
    )
    summary = result.summary
    print(f"{spec.name} · task {task.name} ({len(task)} prompts) · method {args.method}")
    ranked = ",".join(f"{layer}.{head}" for layer, head in heads[:max(ks)])
    print(f"ranked heads ({source}): {ranked}")
    random_mean = summary["mean_random_accuracy"]
    frame = pd.DataFrame(
        [{"k": k, "top_k_accuracy": acc, "mean_random_accuracy": random_mean.get(k)}
         for k, acc in summary["top_k_accuracy"].items()],
        columns=["k", "top_k_accuracy", "mean_random_accuracy"])
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"baseline {summary['baseline_accuracy']:.3f} · {args.n_random} random sets per k")
    if out is not None:
        folder = result.save(out)
        print(f"wrote {folder}/dose_response.csv, dose_response.html, meta.json")
    return 0


# ---------------------------------------------------------------------------------------------
# Parser and entry point


def _model_options(parser: argparse.ArgumentParser, *, recipe: bool = False) -> None:
    """``--model``, ``--dtype`` and ``--device`` of a command that loads a model."""
    from headprobe.catalogue import DEFAULT_MODEL

    if recipe:
        parser.add_argument("--model", default=None, help="override the recipe's model")
    else:
        parser.add_argument("--model", default=DEFAULT_MODEL,
                            help="model spec (default: %(default)s)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="parameter dtype (default: float32 on the CPU, bfloat16 on CUDA)")
    parser.add_argument("--device", default=None,
                        help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA if present)"
                             "; with --device-map the main device")
    parser.add_argument("--device-map", default=None, metavar="MAP",
                        help="spread the model with accelerate: auto, balanced, "
                             "balanced_low_0, sequential, or a JSON object {module: device} "
                             "(devices: 0, cuda:1, cpu, disk)")
    parser.add_argument("--offload-folder", default=None,
                        help="where --device-map's disk modules are written")


def _run_options(parser: argparse.ArgumentParser, *, n_help: str = "number of prompts") -> None:
    """``--n``, ``--seed``, ``--batch-size`` and ``--quiet``."""
    parser.add_argument("--n", type=int, default=None, help=n_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _fresh_option(parser: argparse.ArgumentParser) -> None:
    """``--fresh``: ignore the checkpoints and saved tables of an earlier run in ``--out``."""
    parser.add_argument("--fresh", action="store_true",
                        help="start afresh: ignore checkpoints and finished tables of an "
                        "earlier run in the output folder (by default a run killed half-way "
                        "and started again with the same arguments resumes)")


def _ray_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--ray [ADDRESS]`` and ``--ray-workers N`` (:mod:`headprobe.distributed`)."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help=f"{what}, each worker loading the model (ADDRESS: a Ray cluster, "
                        "e.g. auto; none: a new local Ray instance); needs "
                        "pip install 'headprobe[ray]'")
    parser.add_argument("--ray-workers", type=int, default=2,
                        help="Ray workers, one model each (default: %(default)s)")


def _add_ablate(sub: Any) -> None:
    from headprobe.interventions import experiment_methods

    methods = experiment_methods()
    ablate = sub.add_parser(
        "ablate", help="ablate heads on a task and compare with random head sets",
        description="Judge a task on the clean model, with the target heads ablated, and with "
        "random head sets of the same size ablated; report accuracies, deltas and bootstrap "
        "95%% intervals.")
    _model_options(ablate)
    ablate.add_argument("--task", required=True,
                        help="registered task name (e.g. induction_copy)")
    ablate.add_argument("--heads", required=True,
                        help="'LAYER.HEAD,...' (e.g. 18.6,17.3), or a folder / file written by "
                        "HeadTable.save (then --top K picks the K best heads)")
    ablate.add_argument("--top", type=int, default=None,
                        help="number of top heads to take from a head table (default 5), or "
                        "the first K of a list")
    ablate.add_argument("--method", default="zero", choices=methods,
                        help="intervention (default: %(default)s)")
    ablate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. --option factor=1e-5 (repeatable)")
    ablate.add_argument("--n-random", type=int, default=10,
                        help="random head sets (default: %(default)s)")
    ablate.add_argument("--random-from", default="same_layers",
                        choices=("same_layers", "uniform", "matched"))
    ablate.add_argument("--match-scorer", default=None, help="with --random-from matched: "
                        "the scorer (run on its default data) or saved head table whose "
                        "scores the random heads match")
    ablate.add_argument("--match-column", default="score", help="its column (default score)")
    ablate.add_argument("--match-tolerance", type=float, default=None,
                        help="largest score difference to the target head")
    ablate.add_argument("--match-within", default="model", choices=("model", "layer",
                                                                     "kv_group"))
    ablate.add_argument("--n-bootstrap", type=int, default=1000)
    ablate.add_argument("--out", default=None,
                        help="write ablation.csv, ablation.html and meta.json here")
    _ray_options(ablate, what="judge the conditions (baseline, target, random sets) on Ray "
                 "workers (with --out each judged condition is checkpointed)")
    _fresh_option(ablate)
    _run_options(ablate, n_help="number of task prompts")
    ablate.set_defaults(func=cmd_ablate)

    dose = sub.add_parser(
        "dose", help="dose-response: ablate the top-k heads for several k vs random k-sets",
        description="Judge a task on the clean model, with the k best heads ablated for every "
        "k of --ks, and with --n-random random sets of k heads ablated; print accuracy "
        "against k.")
    _model_options(dose)
    dose.add_argument("--task", required=True, help="registered task name (e.g. induction_copy)")
    dose.add_argument("--heads", required=True,
                      help="a folder / file written by HeadTable.save (its best heads, in "
                      "order), or an ordered 'LAYER.HEAD,...' list, best first")
    dose.add_argument("--top", type=int, default=None,
                      help="heads to take from a head table (default: the largest k)")
    dose.add_argument("--ks", default="1,2,4,8",
                      help="k values, comma-separated (default: %(default)s)")
    dose.add_argument("--method", default="zero", choices=methods,
                      help="intervention (default: %(default)s)")
    dose.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="method option, e.g. --option factor=1e-5 (repeatable)")
    dose.add_argument("--n-random", type=int, default=5,
                      help="random head sets per k (default: %(default)s)")
    dose.add_argument("--random-from", default="same_layers", choices=("same_layers", "uniform"))
    dose.add_argument("--n-bootstrap", type=int, default=1000)
    dose.add_argument("--out", default=None,
                      help="write dose_response.csv, dose_response.html and meta.json here")
    _run_options(dose, n_help="number of task prompts")
    dose.set_defaults(func=cmd_dose)


def build_parser() -> argparse.ArgumentParser:
    """The ``headprobe`` argument parser (each subcommand sets ``func``)."""
    parser = argparse.ArgumentParser(
        prog="headprobe", description="Score, test and steer the attention heads of a model.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("models", help="what can be loaded here and now").set_defaults(func=cmd_models)
    scorers = sub.add_parser("scorers", help="registered scorers; with a NAME, its parameters")
    scorers.add_argument("name", nargs="?", default=None,
                         help="print this scorer's parameters (type, default, help) and prompts")
    scorers.set_defaults(func=cmd_scorers)

    scan = sub.add_parser("scan", help="score every head with one scorer")
    scan.add_argument("scorer")
    _model_options(scan)
    scan.add_argument("--out", required=True)
    scan.add_argument("--top", type=int, default=10, help="heads to print")
    scan.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="scorer parameter (repeatable)")
    _ray_options(scan, what="activation_patching / ablation_scan only: shard the scan over Ray "
                 "workers")
    scan.add_argument("--shard-by", default="prompts", choices=("prompts", "layers"),
                      help="shard by batches of prompts or by groups of layers "
                      "(default: %(default)s)")
    _run_options(scan)
    _fresh_option(scan)
    scan.set_defaults(func=cmd_scan)

    atlas = sub.add_parser("atlas", help="every CPU-cheap scorer, one HTML report")
    _model_options(atlas)
    atlas.add_argument("--out", required=True)
    atlas.add_argument("--scorers", default=None, help="comma-separated subset")
    atlas.add_argument("--validation", default=None, metavar="DIR",
                       help="a folder written by headprobe validate --out: show each scorer's "
                       "precision-recall on its ground truth beside its heatmap")
    _run_options(atlas)
    _fresh_option(atlas)
    atlas.set_defaults(func=cmd_atlas)

    _add_ablate(sub)

    from headprobe.validate.command import add_validate

    add_validate(sub)

    recipe = sub.add_parser("recipe", help="run a head-discovery recipe (TOML)")
    recipe.add_argument("path")
    recipe.add_argument("--out", default=None)
    _model_options(recipe, recipe=True)
    recipe.add_argument("--quiet", action="store_true", help="no progress bars")
    recipe.add_argument("--small", action="store_true",
                        help="run the recipe's [small] setting (test-sized; every step runs)")
    _fresh_option(recipe)
    recipe.set_defaults(func=cmd_recipe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 with one line for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    transformers_log = logging.getLogger("transformers")
    level = transformers_log.level
    if getattr(args, "quiet", False):
        transformers_log.setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except HeadprobeError as error:
        print(f"headprobe: error: {error}", file=sys.stderr)
        return 2
    finally:
        transformers_log.setLevel(level)


if __name__ == "__main__":
    raise SystemExit(main())
