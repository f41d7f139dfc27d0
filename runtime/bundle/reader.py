"""Open a bundle (folder or .tar) and prove its files are the ones its manifest lists.

A bundle is what ships to a device; opening it checks every file's size and sha256
against ``manifest.json`` so a truncated download or an altered file is caught
before the model runs. Tar bundles are unpacked safely into a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import ValidationError
from slmforge.runtime.bundle.tar import unpack_bundle_tar

from slmforge.cache import cache_dir
from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, sha256_file
from slmforge.manifest import SUPPORTED_BUNDLE_FORMATS, BundleFile, BundleManifest
from slmforge.schema import describe_validation_error, read_structured

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
        return inside_bundle(self.root, self.manifest.model.get("path"), "model.path")

    @property
    def embedder_dir(self) -> Path:
        return inside_bundle(self.root, self.manifest.embedder.path, "embedder.path")

    @property
    def rag_db(self) -> Path:
        return inside_bundle(self.root, self.manifest.index.get("path", RAG_DB), "index.path")

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


def bundle_summary(manifest: BundleManifest) -> str:
    """The manifest's one line: the model file's quant and what the index holds."""
    return (f"{manifest.model.get('quant')} + {manifest.index.get('chunks', 0)} chunks from "
            f"{manifest.index.get('documents', 0)} documents")


def write_manifest(root: Path, manifest: BundleManifest) -> BundleManifest:
    """Re-list every file with size and sha256, refresh the summary line, and write ``manifest.json`` atomically."""
    manifest = manifest.model_copy(update={"files": file_entries(root), "summary": bundle_summary(manifest)})
    atomic_write_json(root / BUNDLE_MANIFEST, manifest.model_dump(mode="json"))
    return manifest


def read_bundle_manifest(root: Path) -> BundleManifest:
    """``manifest.json``, refusing a format this slmforge does not read before looking at the rest."""
    path = root / BUNDLE_MANIFEST
    if not path.is_file():
        raise UserError(f"{root}: no {BUNDLE_MANIFEST}; is this a bundle made by 'slmforge bundle'?")
    data = read_structured(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    version = data.get("format_version")
    if type(version) is not int or version not in SUPPORTED_BUNDLE_FORMATS:
        readable = ", ".join(map(str, SUPPORTED_BUNDLE_FORMATS))
        raise UserError(f"{path}: bundle format_version {json.dumps(version)} is not one this slmforge reads "
                        f"({readable}); rebuild the bundle with this slmforge or upgrade slmforge")
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_validation_error(path, exc)) from None


def check_manifest_paths(root: Path, manifest: BundleManifest) -> None:
    """Every path the manifest names resolves (links followed) inside the bundle; no link in it leads out."""
    bundle = Bundle(root=root, manifest=manifest, source=root)
    _ = bundle.model_path, bundle.embedder_dir, bundle.rag_db
    for entry in manifest.files:
        inside_bundle(root, entry.path, "files")
    real_root = root.resolve()
    for folder, dirs, files in os.walk(root):
        for entry in (*dirs, *files):
            path = Path(folder) / entry
            if path.is_symlink() and not path.resolve().is_relative_to(real_root):
                raise UserError(f"{root}: '{path.relative_to(root)}' links outside the bundle; refusing it")


def verify_files(root: Path, manifest: BundleManifest, skip: tuple[str, ...] = ()) -> None:
    """Raise a UserError naming the first missing, truncated or altered file."""
    for entry in manifest.files:
        if entry.path in skip:
            continue
        path = inside_bundle(root, entry.path, "files")
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


def inside_bundle(root: Path, rel: object, field: str) -> Path:
    """``root/rel`` when it resolves (following links) inside the bundle; else one line naming the field.

    A bundle is untrusted: a manifest path such as ``../other/rag.db`` or a link to ``/etc`` would
    make ``index add`` write, or ``run`` load, a file the bundle's sha256 list never covered.
    """
    return resolve_inside(root, rel, f"manifest field '{field}'", "the bundle")


def resolve_inside(root: Path, rel: object, what: str, where: str | None = None) -> Path:
    """``root/rel`` if ``rel`` is a relative path that resolves (links followed) inside ``root``."""
    where = where or f"its folder {root}"
    if not isinstance(rel, str) or not rel.strip():
        raise UserError(f"{root}: {what} must be a path inside {where}, got {json.dumps(rel)}; rebuild it")
    pure = PurePosixPath(rel)
    path = root / pure
    if pure.is_absolute() or ".." in pure.parts or not path.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{root}: {what} names '{rel}', outside {where}; refusing it")
    return path


def open_bundle(path: str | os.PathLike[str], verify: bool = True, skip_verify: tuple[str, ...] = ()) -> Bundle:
    """A bundle folder, or a ``.tar`` unpacked safely into the cache; files verified unless ``verify`` is False.

    Every path the manifest names must resolve inside the bundle. A ``.tar`` whose content is
    refused does not stay in the cache.
    """
    source = Path(path)
    if not source.exists():
        raise UserError(f"{source}: no such bundle")
    root = _unpack_tar(source) if source.is_file() else source
    try:
        manifest = read_bundle_manifest(root)
        check_manifest_paths(root, manifest)
        if verify:
            verify_files(root, manifest, skip=skip_verify)
    except UserError:
        if source.is_file():
            shutil.rmtree(_tar_cache_entry(source), ignore_errors=True)
        raise
    return Bundle(root=root, manifest=manifest, source=source)


# -- tar bundles -----------------------------------------------------------------------------------------


def _tar_cache_entry(source: Path) -> Path:
    """The cache folder of one .tar, keyed by (path, size, mtime) so a changed file is unpacked again."""
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir("bundles") / f"{source.stem}-{key}"


def _unpack_tar(source: Path) -> Path:
    """Unpack once into the cache (members checked and sizes capped by ``bundle_tar``); the folder holding
    manifest.json."""
    target = _tar_cache_entry(source)
    if not target.is_dir():
        return unpack_bundle_tar(source, target, BUNDLE_MANIFEST)
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
