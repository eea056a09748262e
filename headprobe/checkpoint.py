"""Resumable long runs: a small checkpoint store next to a run's output.

A run that is killed half-way and started again with the same arguments continues from where
it stopped. Each resumable unit of work (one scorer run) keeps one file
``<out>/.checkpoints/<name>.pt`` holding

- ``key``: the **run key**, a sha256 prefix of the run's :func:`run_key_fields` (scorer or
  step name, the model's :class:`~headprobe.arch.ModelSpec` with dtype and device, the
  parameters, seed, ``n``, batch size, the data fingerprint and the headprobe version);
- ``fields``: those fields as JSON text, so a changed run can say *what* changed;
- ``progress``: one human-readable line (``"batch 5 of 32"``);
- ``state``: the partial state, a dict of tensors, numbers, strings and nested dicts/lists.

The file is written atomically (temporary sibling, then rename) after every unit of work and
read with ``torch.load(weights_only=True)``, so nothing but tensors and plain containers is
ever unpickled. Loading it under a different key deletes it and starts afresh, and says so
(naming the changed fields); :meth:`Checkpoint.finish` removes it when the run is done.

Which work resumes at which grain:

- per batch: the attention-pattern scorers of the induction head type (``previous_token``,
  ``duplicate_token``, ``induction``) and ``sink``; any scorer
  whose ``compute`` takes a ``checkpoint`` keyword (:attr:`headprobe.scorers.base.Scorer.
  resumes_per_batch`);
- per scorer: :func:`headprobe.atlas.build_atlas` skips a scorer whose table is already saved
  under the same run key (:func:`saved_table_matches`);
- per step: :func:`headprobe.recipes.run_recipe` skips a step whose table is already saved under
  the same run key;
- per shard: a Ray-sharded all-head scan (:func:`headprobe.distributed.ray_scan`, ``headprobe
  scan ... --ray``) saves each finished shard's sums at once; a restarted driver skips them;
- other scorers (ablation / patching scans in one process, DLA, task scans) restart from
  their beginning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from headprobe.arch import ModelSpec
from headprobe.headtable import to_jsonable
from headprobe.provenance import headprobe_version
from headprobe.resultset import LOCK_NAME, PUBLISH_LOCK_NAME, read_lock, result_set

CHECKPOINT_DIR = ".checkpoints"
CHECKPOINT_WAIT_S = 60.0  # another run's checkpoint save into the same folder takes ms
LOCK_FILES = (LOCK_NAME, PUBLISH_LOCK_NAME)
_LOG = logging.getLogger(__name__)

Echo = Callable[[str], None]


def log_echo(message: str) -> None:
    """The default ``echo``: a ``headprobe.checkpoint`` log record at WARNING level (shown on
    stderr even when logging is not configured)."""
    _LOG.warning(message)


def run_key_fields(
    *,
    name: str,
    spec: ModelSpec | Mapping[str, Any],
    params: Mapping[str, Any],
    seed: int | None,
    n: int | None,
    batch_size: int | None,
    fingerprint: str | None,
    version: str | None = None,
) -> dict[str, Any]:
    """The JSON-safe fields a run key is the hash of.

    ``spec`` is a :class:`ModelSpec` (or its ``to_dict()``); ``version`` defaults to the
    installed headprobe version.
    """
    model = spec.to_dict() if isinstance(spec, ModelSpec) else dict(spec)
    return to_jsonable({
        "name": name,
        "model": model,
        "params": dict(sorted(params.items())),
        "seed": seed,
        "n": n,
        "batch_size": batch_size,
        "data_fingerprint": fingerprint,
        "headprobe_version": version if version is not None else headprobe_version(),
    })


def run_key(fields: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of ``fields`` as canonical JSON."""
    text = json.dumps(to_jsonable(fields), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``["params.seq_len: 8 -> 10", "seed: 0 -> 1"]``: the leaves that differ (dotted paths)."""
    changes: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted(set(a) | set(b), key=str):
                walk(a.get(key, "<absent>"), b.get(key, "<absent>"),
                     f"{path}.{key}" if path else str(key))
        elif a != b:
            changes.append(f"{path}: {a!r} -> {b!r}")

    walk(to_jsonable(old), to_jsonable(new), "")
    return changes


class Checkpoint:
    """The checkpoint of one unit of resumable work: ``<root>/.checkpoints/<name>.pt``.

    Args:
        root: the run's output folder (the checkpoint folder is created inside it on the
            first :meth:`save`).
        name: the scorer or step name (the file stem).
        fields: the run's :func:`run_key_fields`.
        fresh: ignore (and delete) a stored checkpoint on the first :meth:`load`.
        echo: where the "resuming" / "starting afresh" lines go (default :func:`log_echo`).
    """

    def __init__(self, root: str | Path, name: str, fields: Mapping[str, Any], *,
                 fresh: bool = False, echo: Echo | None = None) -> None:
        self.root = Path(root)
        self.name = name
        self.fields = to_jsonable(dict(fields))
        self.key = run_key(self.fields)
        self.fresh = fresh
        self.echo: Echo = echo if echo is not None else log_echo
        self._state: dict[str, Any] | None = None  # the last loaded or saved state
        self._loaded = False

    @property
    def folder(self) -> Path:
        """``<root>/.checkpoints``."""
        return self.root / CHECKPOINT_DIR

    @property
    def path(self) -> Path:
        """``<root>/.checkpoints/<name>.pt``."""
        return self.folder / f"{self.name}.pt"

    def read(self) -> dict[str, Any] | None:
        """The stored record (``key``, ``fields``, ``progress``, ``state``) whatever its key,
        or ``None`` when there is none or it cannot be read."""
        if not self.path.is_file():
            return None
        try:
            record = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a damaged file only means "start afresh"
            self.echo(f"{self.name}: checkpoint {self.path} is unreadable ({error}); "
                      "starting afresh")
            return None
        return record if isinstance(record, dict) and "key" in record else None

    def load(self) -> dict[str, Any] | None:
        """The saved partial state of this run, or ``None`` to start from the beginning.

        A checkpoint of a different run (another key) is deleted, and the echo line names the
        fields that changed; with ``fresh`` any checkpoint is deleted.
        """
        if self.fresh:
            self.fresh = False  # only the first load of a run ignores the stored state
            if self.path.is_file():
                self.echo(f"{self.name}: --fresh: discarding checkpoint {self.path}; "
                          "starting afresh")
                self.clear()
            return None
        record = self.read()
        if record is None:
            return None
        if record["key"] != self.key:
            try:
                old = json.loads(record.get("fields", "{}"))
            except (TypeError, ValueError):
                old = {}
            changed = describe_changes(old, self.fields) or ["run key"]
            self.echo(f"{self.name}: checkpoint {self.path} is from a different run (changed: "
                      f"{'; '.join(changed)}); starting afresh")
            self.clear()
            return None
        self.echo(f"{self.name}: resuming from checkpoint {self.path} ({record['progress']})")
        self._state = dict(record["state"])
        return dict(self._state)

    def save(self, state: Mapping[str, Any], progress: str = "") -> None:
        """Write ``state`` (tensors, numbers, strings, nested dicts/lists) atomically.

        ``progress``: one line saying how far the run is (shown when it resumes).
        """
        self._state = dict(state)
        record = {"key": self.key, "fields": json.dumps(self.fields, sort_keys=True),
                  "progress": progress, "state": dict(state)}
        # a set of one file through the one writer: whole or not at all; another run
        # checkpointing into the same folder is waited for (a few ms), not failed
        with result_set(self.folder, last=(), wait=CHECKPOINT_WAIT_S,
                        what=f"the {self.name} checkpoint") as staged:
            staged.write(self.path.name, lambda tmp: torch.save(record, tmp))

    def part(self, name: str) -> CheckpointPart:
        """A view of this checkpoint holding one part of its state under ``name`` (for a
        run made of several resumable loops, e.g. one per ablation method)."""
        return CheckpointPart(self, name)

    def clear(self) -> None:
        """Delete the checkpoint file (and the checkpoint folder once it is empty)."""
        self.path.unlink(missing_ok=True)
        if self.folder.is_dir() and all(p.name in LOCK_FILES for p in self.folder.iterdir()):
            shutil.rmtree(self.folder, ignore_errors=True)  # only the writer's lock files left

    def finish(self) -> None:
        """The run is complete: remove its checkpoint."""
        self.clear()


class CheckpointPart:
    """One named part of a :class:`Checkpoint`'s state, with the same ``load`` / ``save``.

    ``load`` returns the part's saved state (``None`` when it has none yet); ``save``
    writes it into the whole state, keeping the other parts.
    """

    def __init__(self, parent: Checkpoint, name: str) -> None:
        self.parent = parent
        self.name = name

    def load(self) -> dict[str, Any] | None:
        """The part's saved state, or ``None``."""
        if not self.parent._loaded:
            self.parent._loaded = True
            self.parent.load()
        state = (self.parent._state or {}).get(self.name)
        return dict(state) if isinstance(state, dict) else None

    def save(self, state: Mapping[str, Any], progress: str = "") -> None:
        """Save the part's ``state`` with the other parts unchanged."""
        whole = dict(self.parent._state or {})
        whole[self.name] = dict(state)
        self.parent.save(whole, progress=f"{self.name}: {progress}")


def saved_table_matches(folder: str | Path, key: str, *, name: str,
                        fields: Mapping[str, Any] | None = None,
                        echo: Echo | None = None) -> bool:
    """Whether ``<folder>/meta.json`` is a table saved by the run with ``key``.

    :meth:`headprobe.headtable.HeadTable.save` removes ``meta.json`` first and writes it last,
    so a ``meta.json`` with the right ``run_key`` means every file of that table is complete.
    When a table is there under another key and ``fields`` are given, ``echo`` says what
    changed.
    """
    meta_path = Path(folder) / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        with read_lock(folder):
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if meta.get("run_key") == key and meta.get("scorer") == name:
        return True
    if fields is not None and meta.get("run_key_fields") is not None:
        changed = describe_changes(meta["run_key_fields"], fields) or ["run key"]
        (echo if echo is not None else log_echo)(
            f"{name}: the saved table in {folder} is from a different run (changed: "
            f"{'; '.join(changed)}); recomputing")
    return False
