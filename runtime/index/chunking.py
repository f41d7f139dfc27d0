"""Split documents into retrieval chunks that follow headings and paragraphs.

A chunk never crosses a section; it packs whole paragraphs up to a token budget
(counted with the embedder's tokenizer) and starts with a few tokens of overlap
from the previous chunk. Each chunk is a span of the document: ``text`` equals
``document[char_start:char_end]``, so citations can point into the source.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from slmforge.errors import UserError

TEXT_SUFFIXES = (".rst", ".md", ".markdown", ".txt", ".text")
DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP = 32
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.<>_])\1{2,}\s*$")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n")

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Chunk:
    text: str
    source: str
    heading: tuple[str, ...]
    char_start: int
    char_end: int
    n_tokens: int

    @property
    def heading_path(self) -> str:
        return " > ".join(self.heading)

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(f"{self.heading_path}\n{self.text}".encode()).hexdigest()

    def embedding_text(self) -> str:
        """What is embedded and matched: the heading path gives a paragraph its topic."""
        return f"{self.heading_path}\n\n{self.text}" if self.heading else self.text


@dataclass(frozen=True)
class Section:
    heading: tuple[str, ...]
    start: int
    end: int


def word_count(text: str) -> int:
    """A tokenizer-free stand-in for tests and previews (about 0.75 of BERT word pieces)."""
    return len(text.split())


def iter_documents(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """(file, source name) for every text document under ``paths``, sorted, hidden files skipped.

    The source name is the path relative to the folder given (or the file name).
    """
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise UserError(f"{root}: no such file or folder to index")
        if root.is_file():
            yield root, root.name
            continue
        for file in sorted(root.rglob("*")):
            rel = file.relative_to(root)
            if file.is_file() and file.suffix.lower() in TEXT_SUFFIXES and not any(p.startswith(".") for p in rel.parts):
                yield file, rel.as_posix()


def decode_document(data: bytes, name: str) -> tuple[str, str | None]:
    """Text of a document and a warning if it was not UTF-8 (read as cp1252 then, never dropped silently)."""
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{name}: looks binary (NUL bytes), not a text document; remove it from the docs folder")
    for encoding in ("utf-8-sig", "utf-16"):
        if encoding == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        try:
            return data.decode(encoding), None
        except UnicodeDecodeError:
            continue
    return data.decode("cp1252", errors="replace"), f"{name}: not UTF-8; read as cp1252 (re-save it as UTF-8 to be sure)"


def split_sections(text: str) -> list[Section]:
    """Sections of a reST or Markdown document, each with its full heading path."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    styles: list[tuple[str, bool]] = []  # reST levels are given by the order adornment styles appear
    stack: list[tuple[int, str]] = []
    found: list[tuple[int, int, tuple[str, ...]]] = []  # (heading line start, body start, heading path)
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\n")
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        heading, style, consumed = _heading_at(lines, i) if not in_fence else (None, None, 1)
        if heading is not None and style is not None:
            if style not in styles:
                styles.append(style)
            level = styles.index(style)
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading))
            found.append((offsets[i], offsets[i + consumed], tuple(h for _, h in stack)))
        i += consumed
    starts = [(0, ())] + [(body, path) for _, body, path in found]
    ends = [line_start for line_start, _, _ in found] + [len(text)]
    return [Section(path, a, b) for (a, path), b in zip(starts, ends) if b > a and text[a:b].strip()]


def _heading_at(lines: list[str], i: int) -> tuple[str | None, tuple[str, bool] | None, int]:
    """(title, adornment style, lines used) if a reST or Markdown heading starts at line ``i``."""
    line = lines[i].rstrip("\n")
    nxt = lines[i + 1].rstrip("\n") if i + 1 < len(lines) else ""
    third = lines[i + 2].rstrip("\n") if i + 2 < len(lines) else ""
    if _RST_ADORNMENT.match(line) and nxt.strip() and not _RST_ADORNMENT.match(nxt) and _RST_ADORNMENT.match(third):
        return nxt.strip(), (line.strip()[0], True), 3
    if (line.strip() and not line.startswith((" ", "\t")) and not _RST_ADORNMENT.match(line)
            and _RST_ADORNMENT.match(nxt) and len(nxt.strip()) >= len(line.strip())):
        return line.strip(), (nxt.strip()[0], False), 2
    if m := _MD_HEADING.match(line):
        return m.group(2), ("#" * len(m.group(1)), False), 1
    return None, None, 1


def _spans(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Non-blank pieces of text[start:end] separated by ``pattern``, as trimmed absolute spans."""
    pieces, pos = [], start
    for m in pattern.finditer(text, start, end):
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, end))
    out = []
    for a, b in pieces:
        seg = text[a:b]
        if seg.strip():
            lead = len(seg) - len(seg.lstrip())
            out.append((a + lead, a + len(seg.rstrip())))
    return out


_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_WORD_GAP = re.compile(r"\s+")


def _pieces(text: str, section: Section, max_tokens: int, count: TokenCounter) -> list[tuple[int, int, int]]:
    """Paragraph spans with token counts; oversized ones split at sentences, then at words."""
    out: list[tuple[int, int, int]] = []
    for a, b in _spans(text, section.start, section.end, _PARAGRAPH):
        n = count(text[a:b])
        if n <= max_tokens:
            out.append((a, b, n))
            continue
        for sa, sb in _spans(text, a, b, _SENTENCE_END):
            n = count(text[sa:sb])
            if n <= max_tokens:
                out.append((sa, sb, n))
                continue
            words = _spans(text, sa, sb, _WORD_GAP)
            cur, cur_n, prev_end = None, 0, sa
            for wa, wb in words:
                wn = count(text[wa:wb])
                if cur is not None and cur_n + wn > max_tokens:
                    out.append((cur, prev_end, cur_n))
                    cur, cur_n = None, 0
                if cur is None:
                    cur = wa
                cur_n += wn
                prev_end = wb
            if cur is not None:
                out.append((cur, prev_end, cur_n))
    return out


def chunk_text(
    text: str,
    source: str,
    count_tokens: TokenCounter = word_count,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
) -> list[Chunk]:
    """Chunks of one document (see module docstring); ``count_tokens`` should be the embedder's."""
    if max_tokens < 8:
        raise UserError(f"chunk size {max_tokens} tokens is too small; use at least 8")
    overlap = max(0, min(overlap, max_tokens // 2))
    chunks: list[Chunk] = []
    for section in split_sections(text):
        pieces = _pieces(text, section, max_tokens, count_tokens)
        i = 0
        while i < len(pieces):
            j, total = i, 0
            while j < len(pieces) and (j == i or total + pieces[j][2] <= max_tokens):
                total += pieces[j][2]
                j += 1
            start, end = pieces[i][0], pieces[j - 1][1]
            chunks.append(Chunk(text[start:end], source, section.heading, start, end, total))
            if j >= len(pieces):
                break
            k, carried = j, 0  # step back over whole pieces that fit in the overlap, but always move forward
            while k - 1 > i and carried + pieces[k - 1][2] <= overlap:
                k -= 1
                carried += pieces[k][2]
            i = k
    return chunks
