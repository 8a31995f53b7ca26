"""Atomic writes: every artefact goes to a temp file in the same folder, then is renamed.

A write that runs out of space (disk full, quota, file-size limit) raises `DiskFullError`, naming
the artefact's final path; the temp file is removed and a previous artefact at that path is kept.

`check_output` / `check_output_file`: every command checks where it will write before any work.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile

# Out of space, whichever limit hit: the disk (ENOSPC), a quota (EDQUOT), RLIMIT_FSIZE (EFBIG).
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFullError(OSError):
    """A write ran out of space; `filename` is the artefact's final path, not its temp file."""


def _no_space_errno(e: BaseException) -> int | None:
    """The errno of an out-of-space failure, or None. safetensors' Rust writer raises
    SafetensorError, not OSError; its message ends with the OS error, e.g. "(os error 28)"."""
    if isinstance(e, OSError):
        return e.errno if e.errno in NO_SPACE else None
    if type(e).__name__ == "SafetensorError":
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m and int(m.group(1)) in NO_SPACE:
            return int(m.group(1))
    return None


@contextlib.contextmanager
def no_space_names(path: str):
    """Re-raise an out-of-space failure inside the block as DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError:
        raise  # an inner writer already named its artefact
    except Exception as e:
        code = _no_space_errno(e)
        if code is None:
            raise
        raise DiskFullError(code, os.strerror(code), path) from e


def _remove_orphans(folder: str):
    """Delete temp files left by writers that died (kill -9, power loss) before their rename.
    A temp file names its writer's pid; one whose process is gone can never be completed."""
    for name in os.listdir(folder):
        parts = name.split("-", 2)
        if len(parts) < 3 or parts[0] != ".tmp" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
        except (PermissionError, OverflowError):
            pass  # alive (another user's process) or not a pid: leave it


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temp path next to `path`; rename it over `path` only if the block succeeds."""
    folder = os.path.dirname(os.path.abspath(path))
    with no_space_names(path):
        os.makedirs(folder, exist_ok=True)
        _remove_orphans(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.getpid()}-", suffix=os.path.splitext(path)[1])
        os.close(fd)
    try:
        with no_space_names(path):
            yield tmp
            # mkstemp makes 0600 files; give artefacts the permissions a plain open() would.
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def with_old_keys(record: dict, old_names: dict) -> dict:
    """`record` with renamed fields under the keys files have always held them by, so that a run
    started before a rename still resumes and reads back the same."""
    return {old_names.get(k, k): v for k, v in record.items()}


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)


class AppendLog:
    """A log of whole lines, appended one write per line: a write that fails (disk full) cuts the
    file back to its last whole line, so a resumed run never reads half a record."""

    def __init__(self, path: str):
        self.path = path
        with no_space_names(path):
            self._f = open(path, "ab", buffering=0)

    def write(self, line: str) -> None:
        data = memoryview(line.encode())
        with no_space_names(self.path):
            end = self._f.seek(0, os.SEEK_END)
            try:
                while data:
                    data = data[self._f.write(data):]
            except BaseException:
                with contextlib.suppress(OSError):
                    self._f.truncate(end)
                raise

    def flush(self) -> None:
        pass  # every line is written as it comes

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_run_log(path: str, resumed_at: int, key: str) -> AppendLog:
    """A training run's JSON-lines log, opened for appending. A fresh run starts it empty; a
    resumed run keeps the records up to its checkpoint (record[key] <= resumed_at) and drops
    those a crash left after it, which the run will redo."""
    kept = []
    if resumed_at and os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)[key] <= resumed_at:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (ValueError, KeyError, TypeError):
                    break  # a line cut by the crash: everything after it is gone too
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.writelines(kept)
    return AppendLog(path)  # a disk-full append leaves no half line


def _unwritable(folder: str) -> tuple[str, str] | None:
    """(path, reason) if the folder `folder` cannot be made or written in, else None. A missing
    folder is fine (the writers create it), but then the nearest existing part of its path is
    where it will be created. os.access: root may write anywhere but on a read-only mount."""
    nearest = os.path.normpath(folder or ".")
    while not os.path.lexists(nearest):
        nearest = os.path.dirname(nearest) or "."
    if not os.path.isdir(nearest):
        return nearest, "exists and is not a folder"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return nearest, "is not writable"
    return None


def check_output(folder: str, *names: str) -> None:
    """Refuse, with a one-line ValueError, an output folder that a command could not fill, so that
    it fails before any work rather than with a traceback after minutes of it (and after some of its
    files are written). `names` are the entries it writes in `folder`: files, or folders where the
    name ends in '/'."""
    folders = [folder] + [os.path.join(folder, n.rstrip("/")) for n in names if n.endswith("/")]
    for i, path in enumerate(folders):
        why = (i == 0 or os.path.lexists(path)) and _unwritable(path)
        if why:
            where = "it" if why[0] == os.path.normpath(path or ".") else why[0]
            raise ValueError(f"cannot write in {path}: {where} {why[1]}")
    for name in names:
        if not name.endswith("/") and os.path.isdir(os.path.join(folder, name)):
            raise ValueError(f"cannot write {os.path.join(folder, name)}: a folder of that name is in the way")


def check_output_file(path: str | None) -> None:
    """`check_output` for a command that writes the one file `path` (None: an optional file not asked for)."""
    if not path:
        return
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise ValueError(f"{path} is a folder, not a file")
    why = _unwritable(os.path.dirname(path))
    if why:
        raise ValueError(f"cannot write {path}: {why[0]} {why[1]}")
