"""Read the user's documents (.txt, .md, .rst, .html, .jsonl) into plain records.

Reading is strict: a file that is not UTF-8, cannot be read, or is empty is a
problem the user must see (one line naming the file), never silently skipped,
because a corpus quietly missing files trains a quietly worse model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import UserError

TEXT_SUFFIXES = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".rst": "rst",
                 ".html": "html", ".htm": "html"}
JSONL_SUFFIXES = {".jsonl"}
SUPPORTED = sorted([*TEXT_SUFFIXES, *JSONL_SUFFIXES])


@dataclass(frozen=True)
class InputFile:
    """A file to read and the name it goes by in outputs (relative to the argument that found it)."""

    path: Path
    source: str

    @property
    def kind(self) -> str:
        suffix = self.path.suffix.lower()
        return "jsonl" if suffix in JSONL_SUFFIXES else TEXT_SUFFIXES[suffix]


@dataclass(frozen=True)
class Document:
    """One document: the unit that goes wholly to train or to held-out."""

    doc_id: str
    source: str
    kind: str  # txt | md | rst | html
    text: str


def collect_files(paths: list[str | Path]) -> tuple[list[InputFile], list[str]]:
    """Expand files and folders (recursively, hidden entries skipped) into supported input files.

    Returns (files, skipped) where ``skipped`` lists files inside folders with an
    unsupported suffix. A named file with an unsupported suffix is an error.
    """
    if not paths:
        raise UserError("no documents given; pass files or folders (.txt .md .rst .html .jsonl)")
    files: list[InputFile] = []
    skipped: list[str] = []
    for arg in paths:
        root = Path(arg)
        if root.is_dir():
            found = _walk(root, skipped)
            if not found:
                raise UserError(f"{root}: no supported documents in this folder (looked for {' '.join(SUPPORTED)})")
            files.extend(found)
        elif root.is_file():
            if root.suffix.lower() not in TEXT_SUFFIXES and root.suffix.lower() not in JSONL_SUFFIXES:
                raise UserError(f"{root}: unsupported file type '{root.suffix or '(none)'}'; "
                                f"use one of {' '.join(SUPPORTED)}")
            files.append(InputFile(root, root.name))
        elif root.is_symlink():
            raise UserError(f"{root}: broken symbolic link; point it at a file or remove it")
        else:
            raise UserError(f"{root}: not found; pass existing files or folders")
    unique: dict[Path, InputFile] = {}
    for f in files:
        unique.setdefault(f.path.resolve(), f)
    return list(unique.values()), skipped


def _walk(root: Path, skipped: list[str]) -> list[InputFile]:
    found: list[InputFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = f"{root.name}/{path.relative_to(root).as_posix()}"
            if path.suffix.lower() not in TEXT_SUFFIXES and path.suffix.lower() not in JSONL_SUFFIXES:
                skipped.append(rel)
                continue
            if path.is_symlink() and not path.exists():
                raise UserError(f"{path}: broken symbolic link; point it at a file or remove it")
            found.append(InputFile(path, rel))
    return found


def read_text(path: Path) -> str:
    """The file's text as UTF-8 (a BOM is dropped); unreadable, non-UTF-8 or empty → UserError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__}); "
                        "check the file's permissions or remove it from the inputs") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise UserError(f"{path}: empty file; add text or remove it from the inputs")
    return text


def read_documents(files: list[InputFile]) -> list[Document]:
    """Every document in ``files``: one per text file, one per ``{"text"}`` line of a JSONL file."""
    from slmforge.trainer.data.datasets import iter_jsonl

    docs: list[Document] = []
    for f in files:
        if f.kind != "jsonl":
            docs.append(Document(doc_id=f.source, source=f.source, kind=f.kind, text=read_text(f.path)))
            continue
        read_text(f.path)  # same checks (readable, UTF-8, not empty) with the same messages
        for lineno, obj in iter_jsonl(f.path):
            text = obj.get("text")
            if not isinstance(text, str):
                raise UserError(f"{f.path}:{lineno}: expected a \"text\" string field for a document, "
                                f"got fields {sorted(obj)}")
            if not text.strip():
                continue
            doc_id = str(obj.get("id", obj.get("doc_id", f"{f.source}#{lineno}")))
            kind = obj.get("format") if obj.get("format") in TEXT_SUFFIXES.values() else "txt"
            docs.append(Document(doc_id=doc_id, source=str(obj.get("source", f.source)), kind=kind, text=text))
    if not docs:
        raise UserError("the inputs hold no text; nothing to prepare")
    return docs
