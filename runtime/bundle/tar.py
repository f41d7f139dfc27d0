"""Unpack an untrusted bundle ``.tar``: every member stays inside the folder, sizes are capped.

Python's ``tarfile`` ``data`` filter checks each link with ``os.path.realpath`` on the disk as it
extracts; on affected Pythons (3.11.7 here, CVE-2025-4517) a chain of symlinks whose expansion
passes ``PATH_MAX`` stops that check and a later member lands outside. So the whole member list
is resolved here first, in memory, following every link of the archive (chains, loops, links
through links) before a byte is written; anything that resolves outside the root, any
device, duplicate, or an archive bigger than the caps is refused with one line. Extraction
then writes each member at its resolved path (which holds no link) into a temporary folder
renamed at the end, counting bytes as it writes (a header cannot under-declare a member's size).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 64 * 1024**3
# Bundles hold quantized weights, ONNX and SQLite: they compress little. A gzip bomb expands by 1000×.
MAX_EXPANSION = 20
MAX_LINK_HOPS = 40
_CHUNK = 1 << 20

Rel = tuple[str, ...]  # a path relative to the extraction root, already resolved (no link, no '..')


@dataclass(frozen=True)
class Planned:
    """One member and where it is written: ``path`` is resolved, so writing it never follows a link."""

    member: tarfile.TarInfo
    path: Rel
    copy_of: Rel | None = None  # hard links become copies of the (already written) file


class _Refused(Exception):
    pass


class _Tree:
    """What the archive would create, so links are followed exactly as the OS would follow them."""

    def __init__(self) -> None:
        self.kinds: dict[Rel, str] = {(): "dir"}
        self.links: dict[Rel, str] = {}
        self._hops = 0

    def resolve(self, base: Rel, rel: PurePosixPath) -> Rel:
        """``base/rel`` with every link of the archive followed; raises _Refused when it leaves the root.

        Like the kernel, at most MAX_LINK_HOPS links are followed in one lookup (loops, doubling chains).
        """
        self._hops = 0
        return self._walk(base, rel)

    def _walk(self, base: Rel, rel: PurePosixPath) -> Rel:
        if rel.is_absolute():
            raise _Refused(f"points to the absolute path '{rel}'")
        current = base
        parts = [p for p in rel.parts if p not in ("", ".")]
        for i, part in enumerate(parts):
            if part == "..":
                if not current:
                    raise _Refused("resolves outside the bundle")
                current = current[:-1]
                continue
            candidate = (*current, part)
            last = i == len(parts) - 1
            if candidate in self.links:
                self._hops += 1
                if self._hops > MAX_LINK_HOPS:
                    raise _Refused(f"needs more than {MAX_LINK_HOPS} links to resolve (a loop?)")
                current = self._walk(current, PurePosixPath(self.links[candidate]))
            elif not last and self.kinds.get(candidate, "dir") != "dir":
                raise _Refused(f"goes through '{'/'.join(candidate)}', which is not a folder")
            else:
                current = candidate
        return current

    def claim(self, path: Rel, kind: str, parent: Rel) -> None:
        """Record a new entry; an entry may appear once (a folder may be listed again)."""
        for i in range(len(parent)):  # folders the OS will create on the way
            self.kinds.setdefault(parent[: i + 1], "dir")
        existing = self.kinds.get(path)
        if existing is not None and not (existing == kind == "dir"):
            raise _Refused("appears twice in the archive (a later copy would replace the first)")
        self.kinds[path] = kind


def plan_members(members: Iterator[tarfile.TarInfo], name: str, budget: int) -> list[Planned]:
    """Resolve every member inside the root, or raise a UserError naming the first bad one."""
    tree, planned, total = _Tree(), [], 0
    sizes: dict[Rel, int] = {}
    for count, m in enumerate(members, start=1):
        if count > MAX_MEMBERS:
            raise UserError(f"{name}: the tar holds more than {MAX_MEMBERS} members (a bundle has a few dozen); "
                            "refusing to unpack it")
        pure = PurePosixPath(m.name)
        if not m.name or pure.is_absolute() or m.name.startswith(("/", "\\")) or ".." in pure.parts:
            raise UserError(f"{name}: tar member '{m.name}' has an absolute or '..' path; refusing to unpack this bundle")
        if not pure.parts:  # '.': the root itself
            if m.isdir():
                continue
            raise UserError(f"{name}: tar member '{m.name}' is not a folder; refusing to unpack this bundle")
        try:
            parent = tree.resolve((), pure.parent)
            if tree.kinds.get(parent, "dir") != "dir":
                raise _Refused("lies under a file")
            path = (*parent, pure.name)
            if path in tree.links:
                raise _Refused("replaces a link of the archive")
            if m.isdir():
                tree.claim(path, "dir", parent)
                planned.append(Planned(m, path))
            elif m.isfile():
                total += m.size
                _check_budget(total, budget, name)
                tree.claim(path, "file", parent)
                sizes[path] = m.size
                planned.append(Planned(m, path))
            elif m.issym():
                tree.resolve(parent, PurePosixPath(m.linkname))  # the target must stay inside (it may not exist yet)
                tree.claim(path, "link", parent)
                tree.links[path] = m.linkname
                planned.append(Planned(m, path))
            elif m.islnk():
                target = tree.resolve((), PurePosixPath(m.linkname))  # hard link names are archive-root relative
                if tree.kinds.get(target) != "file":
                    raise _Refused(f"is a hard link to '{m.linkname}', which is not a file earlier in the archive")
                total += sizes[target]
                _check_budget(total, budget, name)
                tree.claim(path, "file", parent)
                sizes[path] = sizes[target]
                planned.append(Planned(m, path, copy_of=target))
            else:
                raise UserError(f"{name}: tar member '{m.name}' is a device or special file; refusing to unpack it")
        except _Refused as why:
            link = m.linkname if len(m.linkname) <= 60 else f"{m.linkname[:28]}...{m.linkname[-28:]}"
            target = f" (link to '{link}')" if m.issym() or m.islnk() else ""
            raise UserError(f"{name}: tar member '{m.name}'{target} {why}; refusing to unpack this bundle") from None
    _check_links_again(tree, name)
    return planned


def _check_links_again(tree: _Tree, name: str) -> None:
    """A link checked when it was added can lead elsewhere once a later member turns a folder it goes
    through into a link; every link must still resolve inside with the whole archive in place."""
    for path, target in tree.links.items():
        try:
            tree.resolve(path[:-1], PurePosixPath(target))
        except _Refused as why:
            raise UserError(f"{name}: tar member '{'/'.join(path)}' (link to '{target[:60]}') {why} once the "
                            "whole archive is unpacked; refusing to unpack this bundle") from None


def _check_budget(total: int, budget: int, name: str) -> None:
    if total > budget:
        raise UserError(f"{name}: the tar unpacks to more than {budget / 1e6:,.0f} MB (limit: {MAX_EXPANSION}× the "
                        f".tar's size, at most {MAX_TOTAL_BYTES / 1024**3:.0f} GiB, within the cache's free space); "
                        "refusing to unpack it")


def unpack_budget(source: Path, cache: Path) -> int:
    """Bytes a tar of this size may unpack to here: the expansion cap, the absolute cap, the free space."""
    existing = next(p for p in (cache, *cache.parents) if p.exists())  # nothing is created before the checks
    free = shutil.disk_usage(existing).free
    return min(MAX_TOTAL_BYTES, MAX_EXPANSION * source.stat().st_size, free)


def copy_capped(src: IO[bytes], dst: IO[bytes], budget: int, name: str, member: str) -> int:
    """Copy ``src`` to ``dst``; refuse once more than ``budget`` bytes came out. Returns bytes written."""
    written = 0
    while block := src.read(_CHUNK):
        written += len(block)
        if written > budget:
            raise UserError(f"{name}: tar member '{member}' unpacks past the size limit ({budget / 1e6:,.0f} MB "
                            "left); refusing to unpack it")
        dst.write(block)
    return written


def top_folder(planned: list[Planned], wanted: str) -> Rel | None:
    """``()`` if file ``wanted`` is at the root, ``(top,)`` if every member is under one folder holding it."""
    files = {p.path for p in planned if p.member.isfile() or p.copy_of is not None}
    if (wanted,) in files:
        return ()
    tops = {p.path[0] for p in planned}
    if len(tops) == 1 and (top := next(iter(tops)), wanted) in files:
        return (top,)
    return None


def unpack_bundle_tar(source: Path, target: Path, wanted: str) -> Path:
    """Check every member of ``source``, then unpack it as ``target`` (a temporary folder renamed at the end).

    Returns the folder holding file ``wanted`` (the root or the single top folder); refuses before
    writing anything when there is none.
    """
    name = str(source)
    try:
        with tarfile.open(source) as tar:
            budget = unpack_budget(source, target.parent)
            planned = plan_members(iter(tar), name, budget)
            top = top_folder(planned, wanted)
            if top is None:
                raise UserError(f"{source}: the tar holds no {wanted}; is it a bundle made by 'slmforge bundle --tar'?")
            with atomic_dir(target) as tmp:
                _write(tar, planned, tmp, budget, name)
    except tarfile.TarError as exc:
        # tarfile lists every compression it tried, one per line: the user needs one line
        detail = ("not a tar archive (plain, gzip, bzip2 or xz)" if "could not be opened" in str(exc)
                  else " ".join(str(exc).split()))
        raise UserError(f"{source}: not a readable tar bundle ({detail}); re-copy it") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{source}: could not unpack ({exc}); re-copy it or free disk space") from None
    return target.joinpath(*top)


def _write(tar: tarfile.TarFile, planned: list[Planned], root: Path, budget: int, name: str) -> None:
    left = budget
    for p in planned:
        path = root.joinpath(*p.path)
        m = p.member
        if m.isdir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if m.issym():
            os.symlink(m.linkname, path)
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "wb") as dst:
            if p.copy_of is not None:
                with open(root.joinpath(*p.copy_of), "rb") as src:
                    left -= copy_capped(src, dst, left, name, m.name)
            else:
                src = tar.extractfile(m)
                assert src is not None  # a regular file member always has data
                left -= copy_capped(src, dst, left, name, m.name)
