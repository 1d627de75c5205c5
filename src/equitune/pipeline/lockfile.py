"""What ``dvc.lock`` records: a failed stage's previous outputs put back, entries of stages that no longer exist.

``dvc repro`` deletes a stage's outputs before it runs the command, ``cache: false`` ones included (this project's
committed metrics, curves and reports), and writes the lock only after the command succeeds. A command that then
refuses its input (a bad params edit reaching ``dvc repro -s STAGE``) or dies would leave them deleted while the
lock still describes them. :func:`restore_outputs` puts back every recorded output that is missing, from DVC's
cache (the run-cache keeps a copy of uncached outputs too) or from git's ``HEAD``, and only content whose md5 is
the one the lock records: the workspace is left exactly as the lock describes it.

Command line::

    python -m equitune.pipeline.lockfile orphans   # lock entries of stages dvc.yaml no longer defines (exit 1 if any)
    python -m equitune.pipeline.lockfile prune     # remove them (after shrinking a grid)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

__all__ = ["locked_outputs", "orphaned_entries", "prune_orphans", "restore_outputs"]


def _lock_entries(root: Path) -> dict[str, dict]:
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("stages") or {}


def locked_outputs(root: Path, stage: str) -> list[dict]:
    """The ``outs`` of ``stage``'s entry in ``root/dvc.lock`` (path, md5, ...); empty when it has none."""
    return list((_lock_entries(root).get(stage) or {}).get("outs") or [])


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _cache_object(cache: Path, md5: str) -> Path:
    return cache / md5[:2] / md5[2:]


def _git_file(root: Path, path: str) -> bytes | None:
    shown = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=root, capture_output=True)
    return shown.stdout if shown.returncode == 0 else None


def _git_tree(root: Path, path: str) -> dict[str, bytes]:
    listed = subprocess.run(["git", "ls-tree", "-r", "--name-only", "-z", "HEAD", "--", path], cwd=root,
                            capture_output=True)
    names = [name for name in listed.stdout.decode().split("\0") if name] if listed.returncode == 0 else []
    files = {}
    for name in names:
        data = _git_file(root, name)
        if data is not None:
            files[Path(name).relative_to(path).as_posix()] = data
    return files


def _tree_md5(files: dict[str, str]) -> str:
    """DVC's hash of a directory from its files' md5s (dvc_data's ``Tree.digest``: the md5 of the sorted manifest)."""
    manifest = [{"md5": md5, "relpath": relpath} for relpath, md5 in sorted(files.items())]
    return _md5(json.dumps(manifest, sort_keys=True).encode()) + ".dir"


def _file_content(root: Path, cache: Path, path: str, md5: str) -> bytes | None:
    cached = _cache_object(cache, md5)
    if cached.is_file():
        return cached.read_bytes()
    data = _git_file(root, path)
    return data if data is not None and _md5(data) == md5 else None


def _directory_content(root: Path, cache: Path, path: str, md5: str) -> dict[str, bytes] | None:
    manifest = _cache_object(cache, md5)
    if manifest.is_file():
        files = {}
        for entry in json.loads(manifest.read_text()):
            data = _file_content(root, cache, f"{path}/{entry['relpath']}", entry["md5"])
            if data is None:
                return None
            files[entry["relpath"]] = data
        return files
    committed = _git_tree(root, path)
    if committed and _tree_md5({name: _md5(data) for name, data in committed.items()}) == md5:
        return committed
    return None


def _cache_dir(root: Path) -> Path:
    """Where DVC keeps md5-addressed objects for this repository (honours ``cache.dir`` in its config)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return Path(repo.cache.local.path)


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.restore.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def restore_outputs(root: Path, stage: str) -> tuple[list[str], list[str]]:
    """Put back each output of ``stage`` that the lock records and the workspace lacks.

    Returns the paths restored and the paths that could not be (no copy with the recorded md5 in DVC's cache or
    in git's ``HEAD``). An output still present is never touched.
    """
    restored: list[str] = []
    missing: list[str] = []
    outputs = [out for out in locked_outputs(root, stage) if "md5" in out and not (root / out["path"]).exists()]
    if not outputs:
        return restored, missing
    cache = _cache_dir(root)
    for out in outputs:
        path, md5 = out["path"], out["md5"]
        if md5.endswith(".dir"):
            files = _directory_content(root, cache, path, md5)
            if files is not None:
                for relpath, data in files.items():
                    _write(root / path / relpath, data)
                (root / path).mkdir(parents=True, exist_ok=True)
        else:
            data = _file_content(root, cache, path, md5)
            files = None if data is None else {"": data}
            if data is not None:
                _write(root / path, data)
        (restored if files is not None else missing).append(path)
    return restored, missing


def _defined_stages(root: Path) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {stage.name for stage in repo.index.stages}


def orphaned_entries(root: Path) -> list[str]:
    """Lock entries whose stage ``dvc.yaml`` no longer defines (cells of an old grid, renamed stages)."""
    return sorted(set(_lock_entries(root)) - _defined_stages(root))


def prune_orphans(root: Path) -> list[str]:
    """Remove :func:`orphaned_entries` from ``root/dvc.lock``, keeping every other entry as DVC wrote it."""
    from dvc.utils.serialize import modify_yaml  # DVC's own round-trip writer: the other entries stay as written

    orphans = orphaned_entries(root)
    if orphans:
        with modify_yaml(root / "dvc.lock") as lock:
            for name in orphans:
                del lock["stages"][name]
    return orphans


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m equitune.pipeline.lockfile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["orphans", "prune"])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    args = parser.parse_args(argv)
    if args.command == "orphans":
        orphans = orphaned_entries(args.root)
        for name in orphans:
            print(name)
        return 1 if orphans else 0
    pruned = prune_orphans(args.root)
    print(f"removed {len(pruned)} lock entr{'y' if len(pruned) == 1 else 'ies'} of stages dvc.yaml no longer defines",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
