"""Atomic outputs: DVC deletes a stage's outs before running it and a killed stage must not leave half a file.

Every product is written to a temporary name in the same folder and moved into place with ``os.replace``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "pid_alive", "read_json", "save_torch", "write_json", "write_text"]


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files of ``target`` left by writers that died without cleaning up (SIGKILL, OOM).

    Temp names carry the writer's pid (``.<name>.<pid>.<random>.tmp``); a file whose writer is still alive
    (another process writing the same path) is left alone.
    """
    for stale in target.parent.glob(f"{_temp_prefix(target)}*.tmp"):
        pid_text = stale.name[len(_temp_prefix(target)):].split(".", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            stale.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (used to recognise writers and runs that died)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    The temporary file exists (empty) when the block starts; write to it by name (``torch.save(obj, tmp)``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file 0600; give the product the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to write a non-finite metric value {value!r}")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically, byte for byte the same on every run for the same tensors.

    Through an open file, not the temporary file's name: given a name, ``torch.save`` stores it (the random temporary
    name) as the archive's root folder, so each run wrote other bytes and DVC saw a new output (and reran what depends
    on it) although every tensor was equal."""
    import torch  # here: the module serves stages that never load torch

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
