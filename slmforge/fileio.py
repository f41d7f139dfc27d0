"""Atomic file and directory writes plus content hashing.

Every stage writes to a temporary name and renames at the end, so a crash or a
bad input never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of one file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike[str], ignore: tuple[str, ...] = ("slmforge.json",)) -> str:
    """Hash a file, or a directory as the sorted list of (relative path, file hash).

    Manifest files named in ``ignore`` are skipped so that a directory's hash
    covers its content and not the record written about it.
    """
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if file.name in ignore:
            continue
        digest.update(rel.encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets normal permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove ``<target>.partial-<pid>-*`` folders whose process is gone (an earlier run that was killed).

    A kill -9 or a native crash never reaches ``atomic_dir``'s cleanup, and a model-sized partial
    folder would stay forever; the next run of the same stage removes it. A partial folder of a
    process still running (two runs of one stage at once) is left alone; one without a pid in its
    name was made by an slmforge before this rule and is stale.
    """
    removed = []
    prefix = f"{target.name}.partial-"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):
        owner = stale.name[len(prefix):].partition("-")[0]
        if owner.isdigit() and _process_alive(int(owner)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; rename it to ``out`` on success.

    On any exception the partial directory is removed and ``out`` is untouched.
    With ``overwrite`` an existing ``out`` is replaced only after the new one is complete.
    Partial folders of ``out`` left by a killed earlier run are removed first.
    """
    target = Path(out).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-{os.getpid()}-", dir=target.parent))
    partial.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the finished artifact gets normal permissions
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        if not overwrite:
            shutil.rmtree(partial, ignore_errors=True)
            raise FileExistsError(target)
        old = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=target.parent))
        old.rmdir()
        os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, target)


def sibling(out: Path, suffix: str) -> Path:
    """``qa.jsonl`` → ``qa<suffix>`` (``qa.heldout.jsonl``, ``qa.slmforge.json``): files a stage writes beside its output."""
    return out.with_name(out.name[: -len(out.suffix)] + suffix if out.suffix else out.name + suffix)
