"""Find question → answer pairs in FAQ-like documents.

A FAQ already holds the domain's best SFT data: a section whose heading is a question
('How do I copy a file?') and whose body is the answer. reST and Markdown headings are
read structurally (a question's sub-sections belong to its answer); plain text may use
'Q:' / 'A:' lines; HTML headings are read like Markdown ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slmforge.trainer.data.textclean import (
    _ADORNMENT,
    html_to_text,
    markdown_inline,
    normalize_unicode,
    normalize_whitespace,
    rest_inline,
    to_plain_text,
)

from slmforge.qa_records import QARecord

# "See the next question." teaches nothing on its own
_CROSS_REFERENCE = re.compile(r"^see (?:the )?(?:next|previous|above|below|following)\b[^\n]*$", re.IGNORECASE)


QAPair = QARecord  # the shared record (slmforge/qa_records.py)


@dataclass(frozen=True)
class _Heading:
    start: int  # first line of the heading (its overline, if any)
    body: int  # first line after it
    title: str
    level: int


def _rest_headings(lines: list[str]) -> list[_Heading]:
    styles: list[tuple[str, bool]] = []
    headings: list[_Heading] = []
    i = 0
    while i + 1 < len(lines):
        title, under = lines[i], lines[i + 1]
        if (title.strip() and not title.startswith(" ") and not _ADORNMENT.match(title.strip())
                and _ADORNMENT.match(under.rstrip()) and len(under.rstrip()) >= len(title.rstrip()) - 1):
            char = under.strip()[0]
            over = i > 0 and lines[i - 1].strip()[:1] == char and bool(_ADORNMENT.match(lines[i - 1].strip()))
            if (char, over) not in styles:
                styles.append((char, over))
            headings.append(_Heading(i - 1 if over else i, i + 2, title.strip(), styles.index((char, over))))
            i += 2
            continue
        i += 1
    return headings


def _markdown_headings(lines: list[str]) -> list[_Heading]:
    headings: list[_Heading] = []
    in_fence = False
    for i, line in enumerate(lines):
        if line.strip().startswith(("```", "~~~")):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            headings.append(_Heading(i, i + 1, m.group(2), len(m.group(1)) - 1))
    return headings


@dataclass(frozen=True)
class Section:
    """One heading and its text; ``data qa`` reads FAQ pairs from these and generates questions from them."""

    title: str  # as a reader sees it (inline markup resolved)
    heading: str  # as written in the document: the name the index's chunk heading path carries
    path: tuple[str, ...]  # headings as written, outermost first, ending with this one
    body: str  # raw markup of the whole section, sub-sections included
    own: str  # raw markup up to its first sub-section


def _sections(lines: list[str], headings: list[_Heading]) -> list[Section]:
    """Every heading's section: the body runs to the next heading at its level or above."""
    out = []
    stack: list[_Heading] = []
    for n, h in enumerate(headings):
        end = next((later.start for later in headings[n + 1:] if later.level <= h.level), len(lines))
        own_end = headings[n + 1].start if n + 1 < len(headings) else len(lines)
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
        out.append(Section(h.title, h.title, tuple(s.title for s in stack), "\n".join(lines[h.body:end]),
                           "\n".join(lines[h.body:own_end])))
    return out


def document_sections(text: str, kind: str) -> tuple[list[Section], str]:
    """(sections, markup kind of their bodies) of one document of ``kind`` (rst|md|html|txt).

    HTML is read as Markdown (its headings become ``#`` lines); plain text has no headings,
    so the whole document is one untitled section. Text before the first heading is an
    untitled section too (a README's introduction).
    """
    text = normalize_unicode(text)
    if kind == "html":
        text, kind = html_to_text(text, headings_as_markdown=True), "md"
    lines = text.split("\n")
    if kind not in ("rst", "md"):
        return [Section("", "", (), text, text)], kind
    headings = _rest_headings(lines) if kind == "rst" else _markdown_headings(lines)
    inline = rest_inline if kind == "rst" else markdown_inline
    sections = [Section(" ".join(inline(s.title).split()), s.heading, s.path, s.body, s.own)
                for s in _sections(lines, headings)]
    first = headings[0].start if headings else len(lines)
    preamble = "\n".join(lines[:first])
    return ([Section("", "", (), preamble, preamble)] if preamble.strip() else []) + sections, kind


def _qa_lines(text: str) -> list[tuple[str, str]]:
    """'Q: …' / 'A: …' blocks in plain text."""
    pairs = []
    pattern = re.compile(r"^(?:Q|Question)\s*[:.]\s*(.+?)\n(?:A|Answer)\s*[:.]\s*(.+?)(?=^(?:Q|Question)\s*[:.]|\Z)",
                         re.MULTILINE | re.DOTALL)
    for m in pattern.finditer(text):
        pairs.append((m.group(1).strip(), m.group(2).strip()))
    return pairs


def _clip(answer: str, max_chars: int | None) -> str:
    """Keep whole paragraphs up to ``max_chars`` (at least the first) so the answer fits a training window."""
    if not max_chars or len(answer) <= max_chars:
        return answer
    kept: list[str] = []
    for para in answer.split("\n\n"):
        if kept and len("\n\n".join([*kept, para])) > max_chars:
            break
        kept.append(para)
    if len(kept) > 1 and kept[-1].rstrip().endswith(":"):  # "…like this:" without the example that followed
        kept.pop()
    return "\n\n".join(kept)


def extract_pairs(text: str, kind: str, source: str, min_answer_chars: int = 20,
                  max_answer_chars: int | None = None) -> list[QAPair]:
    """Question/answer pairs in one document of ``kind`` (rst|md|html|txt)."""
    if kind in ("rst", "md", "html"):
        sections, kind = document_sections(text, kind)
        raw = [(s.title, to_plain_text(s.body, kind), s.heading) for s in sections if s.heading]
    else:
        raw = [(q, normalize_whitespace(a), None) for q, a in _qa_lines(normalize_unicode(text))]
    pairs = []
    for question, answer, heading in raw:
        question = " ".join(question.split())
        if (not question.endswith("?") or len(answer.strip()) < min_answer_chars
                or _CROSS_REFERENCE.match(answer.strip())):
            continue
        pairs.append(QAPair(question, _clip(answer.strip(), max_answer_chars), source, heading, "faq"))
    return pairs
