"""The one writer of result sets: every file of one save appears together or not at all.

A *result set* is the files one save writes into a folder: a table's ``<scorer>.parquet``,
``.csv``, ``.html``, the shared ``plotly.min.js`` and ``meta.json``; an experiment's csv, html
and ``meta.json``; an atlas's ``atlas.html`` and ``meta.json``; a recipe's ``summary.json``; a
checkpoint file. The set is the unit, not the folder: the same folder may hold other content
(``.checkpoints/``, other scorers' tables or step folders saved into the same ``--out``) that
a save must keep, so the set is published by *moving its files in*, not by swapping folders.

How :func:`result_set` writes::

    with result_set(folder) as staged:
        staged.write("induction.csv", lambda p: frame.to_csv(p, index=False))
        staged.write_text("meta.json", text)

1. **Lock.** ``<folder>/.headprobe.lock`` is locked with ``fcntl.flock`` (exclusive) for the
   whole save; the lock file records the writer's pid, command line, run key and start time.
   A second writer to the same folder *fails at once* by default (``wait=0``) with
   :class:`ResultSetBusyError`, one line naming the other run (the CLI prints it and exits 2);
   ``wait=seconds`` waits that long first. The lock is released by the kernel when its holder
   dies (even SIGKILL), so a stale lock never blocks.
2. **Stage.** Every file is written into ``<folder>/.headprobe-staging-<pid>-<random>/``: the
   same filesystem, so the final moves are renames. Staging folders a killed writer left are
   removed by the next writer that holds the lock.
3. **Publish.** Under a second, short lock (``.headprobe.publish.lock``), the set's files named
   ``last`` (``meta.json`` by default) are removed first, the other files renamed into place
   (``os.replace``, atomic per file), then the ``last`` files. A reader that goes through
   :func:`read_lock` (``HeadTable.load``, ``saved_table_matches``) takes that lock shared, so it
   sees the old set or the new one, never a mix; the renames take microseconds. A reader that
   ignores the lock can, during that window, see new tables without a ``meta.json`` (a set
   without its ``meta.json`` is incomplete by convention: what resumed runs check), but never a
   ``meta.json`` beside another run's tables, because ``meta.json`` is removed before the first
   rename and renamed in after the last.
4. **Fail whole.** If anything raises before publishing (``OSError`` ENOSPC, EACCES midway, a
   bug), the staging folder is removed and the previous set is untouched; an ``OSError`` becomes
   :class:`~headprobe.errors.ResultWriteError` with one line saying what was not saved, how many
   bytes it needed (the bytes written so far; more were pending) and how many are free.

This module imports only :mod:`headprobe.errors` and the standard library (a leaf layer).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from headprobe.errors import OutputPathError, ResultSetBusyError, ResultWriteError

LOCK_NAME = ".headprobe.lock"
PUBLISH_LOCK_NAME = ".headprobe.publish.lock"
STAGING_PREFIX = ".headprobe-staging-"
OLD_PREFIX = ".old-"
POLL_SECONDS = 0.05


class StagedSet:
    """The staging folder of one :func:`result_set`; write the set's files through it.

    Attributes:
        target: the folder the set is published into.
        folder: the staging folder (inside ``target``, same filesystem).
    """

    def __init__(self, target: Path, folder: Path) -> None:
        self.target = target
        self.folder = folder

    def path(self, name: str) -> Path:
        """The staging path of file (or sub-folder) ``name`` (a plain name, no slashes)."""
        if Path(name).name != name or name in ("", ".", "..") or name.startswith(OLD_PREFIX):
            raise ValueError(f"a result-set file is a plain name, not {name!r}")
        return self.folder / name

    def write(self, name: str, write: Callable[[str], Any]) -> Path:
        """Call ``write(path)`` to write file ``name`` into the staging folder."""
        path = self.path(name)
        write(str(path))
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` (UTF-8) as file ``name``."""
        return self.write(name, lambda p: Path(p).write_text(text, encoding="utf-8"))

    def share(self, name: str, content: bytes) -> Path:
        """Stage a shared asset (e.g. ``plotly.min.js``) once per folder: when ``target``
        already holds ``name`` with exactly this content it is hard-linked (or, where links
        are not possible, copied) instead of written again; otherwise it is written."""
        path = self.path(name)
        existing = self.target / name
        try:
            if existing.is_file() and existing.stat().st_size == len(content) \
                    and existing.read_bytes() == content:
                try:
                    os.link(existing, path)
                except OSError:
                    shutil.copyfile(existing, path)
                return path
        except OSError:
            pass
        path.write_bytes(content)
        return path

    def names(self) -> list[str]:
        """The files (and sub-folders, e.g. a DuoAttention config) staged so far, sorted."""
        return sorted(p.name for p in self.folder.iterdir()
                      if not p.name.startswith(OLD_PREFIX))

    def nbytes(self) -> int:
        """Bytes staged so far (a file being written counts as far as it got)."""
        total = 0
        for path in self.folder.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
        return total


def lock_info(run: str | None = None) -> str:
    """The one line a writer records in its lock file: pid, start time, command line, run."""
    command = " ".join(sys.argv) if sys.argv and sys.argv[0] else "python"
    text = (f"pid {os.getpid()} started {time.strftime('%Y-%m-%d %H:%M:%S')} "
            f"({command})")
    return text + (f" run {run}" if run else "")


@contextlib.contextmanager
def folder_lock(folder: Path, *, wait: float = 0.0, run: str | None = None,
                what: str = "results") -> Iterator[None]:
    """Hold ``<folder>/.headprobe.lock`` exclusively (``flock``) for the block.

    ``wait``: seconds to wait for another writer (0: fail at once). Raises
    :class:`ResultSetBusyError` naming the holder (its pid, start time, command line)."""
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ResultWriteError(f"cannot write {what} to {folder}: {error.strerror} "
                               f"({path})") from error
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(path)
                    raise ResultSetBusyError(
                        f"another run is writing {folder}: {holder}; wait for it to finish or "
                        "give this run another output folder") from None
                time.sleep(POLL_SECONDS)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (lock_info(run) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "a process that has not written its details yet"


@contextlib.contextmanager
def read_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Read a result set under a shared publish lock: the block never overlaps another
    writer's renames, so it sees one whole set. A folder that cannot hold the lock file
    (read-only) is read without it."""
    path = Path(folder) / PUBLISH_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY) if path.exists() else -1
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def result_set(
    target: str | os.PathLike[str],
    *,
    last: Iterable[str] = ("meta.json",),
    remove: Iterable[str] = (),
    wait: float = 0.0,
    run: str | None = None,
    what: str | None = None,
) -> Iterator[StagedSet]:
    """Write a set of files into ``target`` whole or not at all (see the module docstring).

    Args:
        target: the folder (created if needed).
        last: file names published after the others and removed before them (the set's
            completeness marker, ``meta.json``).
        remove: names removed from ``target`` at publish time (files of the old set this one
            no longer writes).
        wait: seconds to wait for another writer of ``target``; 0 (default, what the CLI
            uses) fails at once with :class:`ResultSetBusyError`.
        run: a run key or label recorded in the lock file (shown to a second writer).
        what: what the set is, for messages (default: the folder).

    Raises:
        ResultSetBusyError: another process holds the folder's lock.
        ResultWriteError: an ``OSError`` while staging or publishing (disk full, permission);
            the previous set is untouched and the staging folder removed.
    """
    folder = ensure_folder(target)
    label = what or f"the results for {folder}"
    last = tuple(last)
    with folder_lock(folder, wait=wait, run=run, what=label):
        _remove_stale_staging(folder)
        staging = folder / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
        except OSError as error:
            raise _write_error(label, folder, error, 0) from error
        staged = StagedSet(folder, staging)
        try:
            try:
                yield staged
                _publish(staged, last=last, remove=tuple(remove))
            except OSError as error:
                raise _write_error(label, folder, error, _safe_nbytes(staged)) from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staged: StagedSet, *, last: tuple[str, ...], remove: tuple[str, ...]) -> None:
    folder = staged.target
    names = staged.names()
    for name in names:
        path = staged.folder / name
        os.chmod(path, 0o755 if path.is_dir() else 0o644)  # results are meant to be shared
    first = [n for n in names if n not in last]
    final = [n for n in last if n in names]
    fd = os.open(folder / PUBLISH_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for name in (*last, *remove):
            (folder / name).unlink(missing_ok=True)
        for name in (*first, *final):
            source, destination = staged.folder / name, folder / name
            if source.is_dir() and destination.is_dir():
                # a folder of the set: the old one renamed aside (into the staging folder,
                # removed with it), the new one renamed in
                os.rename(destination, staged.folder / f"{OLD_PREFIX}{name}")
            os.replace(source, destination)
    finally:
        os.close(fd)


def _remove_stale_staging(folder: Path) -> None:
    """Staging folders left by a killed writer (none can be live: we hold the lock)."""
    for path in folder.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _safe_nbytes(staged: StagedSet) -> int:
    try:
        return staged.nbytes()
    except OSError:
        return 0


def _write_error(label: str, folder: Path, error: OSError, written: int) -> ResultWriteError:
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} free"
    except OSError:
        free = "free space unknown"
    need = (f"it needed more than {_size(written)} ({_size(written)} written before the "
            f"failure, more pending); {free}")
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        hint = "free some space or choose another output folder"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose an output folder you can write"
    else:
        hint = "check the output folder"
    return ResultWriteError(f"not saved: {label} ({reason}); {need}; the previous results there "
                            f"are unchanged; {hint}")


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    if nbytes < 1024 ** 2:
        return f"{nbytes / 1024:.1f} KiB"
    return f"{nbytes / 1024 ** 2:.1f} MiB"


def ensure_folder(directory: str | os.PathLike[str]) -> Path:
    """Create ``directory`` if needed; :class:`OutputPathError` if it is a file or unusable."""
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"output directory {folder} is a file; give a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputPathError(f"cannot create output directory {folder}: {error}") from error
    return folder
