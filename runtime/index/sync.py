"""Bring an index in line with folders of documents: add new, replace changed, drop deleted, skip unchanged.

Chunking and embedding happen before a document's transaction starts, so a kill at
any moment loses at most the document in flight; re-running picks up where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmforge.runtime.index.chunking import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_OVERLAP,
    chunk_text,
    decode_document,
    iter_documents,
)
from slmforge.runtime.index.embedder import Embedder
from slmforge.runtime.index.store import DocumentRecord, RagIndex

from slmforge.errors import UserError


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chunks_written: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{len(self.added)} added, {len(self.replaced)} replaced, {len(self.unchanged)} unchanged, "
                f"{len(self.removed)} removed ({self.chunks_written} chunks written)")


def source_prefix(root: Path) -> str:
    """Documents from a folder are named ``<folder name>/<relative path>``; a file by its name."""
    return f"{root.resolve().name}/" if root.is_dir() else ""


def scan(roots: Iterable[Path]) -> list[tuple[Path, str]]:
    """(file, source name) for every document under ``roots``; duplicate names are refused."""
    out: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        prefix = source_prefix(root) if root.exists() else ""
        for path, rel in iter_documents([root]):
            name = prefix + rel if root.is_dir() else rel
            if name in out and out[name].resolve() != path.resolve():
                raise UserError(f"two documents would both be named '{name}' ({out[name]} and {path}); rename one")
            out[name] = path
    return [(p, n) for n, p in sorted(out.items(), key=lambda kv: kv[0])]


def sync_documents(
    index: RagIndex,
    embedder: Embedder,
    roots: list[Path],
    remove_missing: bool = True,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    progress: bool = True,
    on_document: Callable[[str], None] | None = None,
) -> SyncReport:
    """Make the index hold exactly the current documents under ``roots`` (others are left alone)."""
    from tqdm import tqdm

    report = SyncReport()
    files = scan(roots)
    known = index.document_hashes()
    if remove_missing:
        prefixes = tuple(source_prefix(Path(r)) for r in roots if Path(r).is_dir())
        present = {name for _, name in files}
        gone = sorted(s for s in known if prefixes and s.startswith(prefixes) and s not in present)
        index.remove(gone)
        report.removed.extend(gone)
    bar = tqdm(files, desc="indexing", unit="doc", disable=not progress, dynamic_ncols=True)
    for path, name in bar:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if known.get(name) == digest:
            report.unchanged.append(name)
            continue
        text, warning = decode_document(data, name)
        if warning:
            report.warnings.append(warning)
            bar.write(f"warning: {warning}")
        chunks = chunk_text(text, name, embedder.count_tokens, max_tokens=max_tokens, overlap=overlap)
        vectors = embedder.embed([c.embedding_text() for c in chunks])
        index.add_documents([DocumentRecord(name, digest, len(data), chunks, vectors, warning)])
        (report.replaced if name in known else report.added).append(name)
        report.chunks_written += len(chunks)
        bar.set_postfix(chunks=report.chunks_written)
        if on_document is not None:
            on_document(name)
    return report


def remove_documents(index: RagIndex, targets: list[str]) -> list[str]:
    """Remove documents by source name, by folder/file path on disk, or by name prefix ending in '/'."""
    known = index.document_hashes()
    chosen: list[str] = []
    for target in targets:
        path = Path(target)
        if path.exists():
            names = [n for _, n in scan([path])]
        else:
            names = [s for s in known if s == target or (target.endswith("/") and s.startswith(target))]
        matched = [n for n in names if n in known]
        if not matched:
            raise UserError(f"'{target}' matches no indexed document; see 'slmforge index status BUNDLE --json'")
        chosen.extend(m for m in matched if m not in chosen)
    index.remove(chosen)
    return chosen
