"""Open a bundle (folder or .tar) and prove its files are the ones its manifest lists.

A bundle is what ships to a device; opening it checks every file's size and sha256
against ``manifest.json`` so a truncated download or an altered file is caught
before the model runs. Tar bundles are unpacked safely into a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_json, sha256_file
from slmforge.manifest import BundleFile, BundleManifest
from slmforge.schema import load_model

BUNDLE_MANIFEST = "manifest.json"
RAG_DB = "rag.db"
# SQLite's side files come and go while the index is used; they are never part of the signed content.
UNSIGNED_SUFFIXES = ("-journal", "-wal", "-shm")


@dataclass
class Bundle:
    root: Path
    manifest: BundleManifest
    source: Path

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model["path"]

    @property
    def embedder_dir(self) -> Path:
        return self.root / self.manifest.embedder.path

    @property
    def rag_db(self) -> Path:
        return self.root / str(self.manifest.index.get("path", RAG_DB))

    @property
    def manifest_path(self) -> Path:
        return self.root / BUNDLE_MANIFEST


def signed_files(root: Path) -> list[Path]:
    """Every file of a bundle folder that the manifest must cover (relative paths, sorted)."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() != BUNDLE_MANIFEST and not path.name.endswith(UNSIGNED_SUFFIXES):
            out.append(rel)
    return out


def file_entries(root: Path) -> list[BundleFile]:
    return [
        BundleFile(path=rel.as_posix(), size=(root / rel).stat().st_size, sha256=sha256_file(root / rel))
        for rel in signed_files(root)
    ]


def write_manifest(root: Path, manifest: BundleManifest) -> BundleManifest:
    """Re-list every file with size and sha256 and write ``manifest.json`` atomically."""
    manifest = manifest.model_copy(update={"files": file_entries(root)})
    atomic_write_json(root / BUNDLE_MANIFEST, manifest.model_dump(mode="json"))
    return manifest


def read_bundle_manifest(root: Path) -> BundleManifest:
    path = root / BUNDLE_MANIFEST
    if not path.is_file():
        raise UserError(f"{root}: no {BUNDLE_MANIFEST}; is this a bundle made by 'slmforge bundle'?")
    return load_model(BundleManifest, path)


def verify_files(root: Path, manifest: BundleManifest, skip: tuple[str, ...] = ()) -> None:
    """Raise a UserError naming the first missing, truncated or altered file."""
    for entry in manifest.files:
        if entry.path in skip:
            continue
        path = _inside(root, entry.path)
        if not path.is_file():
            raise UserError(f"{root}: bundle file '{entry.path}' is missing; re-copy the bundle")
        size = path.stat().st_size
        if size != entry.size:
            kind = "truncated" if size < entry.size else "larger than its manifest entry"
            raise UserError(f"{root}: bundle file '{entry.path}' is {kind} ({size} bytes, manifest says "
                            f"{entry.size}); {_remedy(entry.path)}")
        if sha256_file(path) != entry.sha256:
            raise UserError(f"{root}: bundle file '{entry.path}' was altered (sha256 differs from the manifest); "
                            f"{_remedy(entry.path)}")


def _remedy(rel: str) -> str:
    if rel == RAG_DB:
        return "if an 'slmforge index add/remove' was interrupted, re-run it to finish; otherwise rebuild the bundle"
    return "re-copy or rebuild the bundle"


def _inside(root: Path, rel: str) -> Path:
    """``root/rel``, refusing manifest paths that point outside the bundle."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise UserError(f"{root}: manifest lists '{rel}', a path outside the bundle; refusing it")
    return root / pure


def open_bundle(path: str | os.PathLike[str], verify: bool = True, skip_verify: tuple[str, ...] = ()) -> Bundle:
    """A bundle folder, or a ``.tar`` unpacked safely into the cache; files verified unless ``verify`` is False."""
    source = Path(path)
    if not source.exists():
        raise UserError(f"{source}: no such bundle")
    root = _unpack_tar(source) if source.is_file() else source
    manifest = read_bundle_manifest(root)
    if verify:
        verify_files(root, manifest, skip=skip_verify)
    return Bundle(root=root, manifest=manifest, source=source)


# -- tar bundles -----------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("SLMFORGE_CACHE", Path.home() / ".cache" / "slmforge")) / "bundles"


def check_tar_members(tar: tarfile.TarFile, name: str) -> list[tarfile.TarInfo]:
    """Members of a bundle tar, refusing anything that could land outside the bundle folder."""
    members = tar.getmembers()
    for m in members:
        pure = PurePosixPath(m.name)
        if pure.is_absolute() or m.name.startswith(("/", "\\")) or ".." in pure.parts:
            raise UserError(f"{name}: tar member '{m.name}' has an absolute or '..' path; refusing to unpack this bundle")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            base = pure.parent if m.issym() else PurePosixPath()
            resolved = os.path.normpath((base / target).as_posix())
            if target.is_absolute() or resolved.startswith(".."):
                raise UserError(f"{name}: tar member '{m.name}' links to '{m.linkname}', outside the bundle; "
                                "refusing to unpack it")
        elif not (m.isfile() or m.isdir()):
            raise UserError(f"{name}: tar member '{m.name}' is a device or special file; refusing to unpack it")
    return members


def _unpack_tar(source: Path) -> Path:
    """Unpack once per (path, size, mtime) into the cache; returns the folder holding manifest.json."""
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}"
    if not target.is_dir():
        try:
            with tarfile.open(source) as tar:
                members = check_tar_members(tar, str(source))
                with atomic_dir(target) as tmp:
                    tar.extractall(tmp, members=members, filter="data")
        except tarfile.TarError as exc:
            raise UserError(f"{source}: not a readable tar bundle ({exc}); re-copy it") from None
    if (target / BUNDLE_MANIFEST).is_file():
        return target
    subdirs = [p for p in target.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / BUNDLE_MANIFEST).is_file():
        return subdirs[0]
    raise UserError(f"{source}: the tar holds no {BUNDLE_MANIFEST}; is it a bundle made by 'slmforge bundle --tar'?")


def manifest_summary(bundle: Bundle) -> dict:
    """A short, JSON-friendly description for status lines and the server's /v1/models."""
    m = bundle.manifest
    return json.loads(json.dumps({
        "model": m.model, "embedder": m.embedder.name, "profile": m.profile, "index": m.index,
        "format_version": m.format_version, "created": m.created,
    }, default=str))
