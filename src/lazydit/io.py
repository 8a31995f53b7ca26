"""Atomic writes: every artefact goes to a temp file in the same folder, then is renamed."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


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
    os.makedirs(folder, exist_ok=True)
    _remove_orphans(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.getpid()}-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600 files; give artefacts the permissions a plain open() would.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
