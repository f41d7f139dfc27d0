"""Chunking: sections follow headings, chunks respect the token budget and are exact spans of the source."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from slmforge.runtime.index.chunking import chunk_text, decode_document, split_sections, word_count

from slmforge.errors import UserError

RST = """\
=========
Top Title
=========

Intro paragraph.

Section A
=========

Alpha one two three.

Sub A1
------

Deep text here.

Section B
=========

Beta text.
"""


def test_rst_heading_paths():
    sections = split_sections(RST)
    paths = [s.heading for s in sections]
    assert ("Top Title",) in paths
    assert ("Top Title", "Section A") in paths
    assert ("Top Title", "Section A", "Sub A1") in paths
    assert ("Top Title", "Section B") in paths  # the sub-level is closed by a sibling section
    for s in sections:
        assert "=====" not in RST[s.start:s.end] and "------" not in RST[s.start:s.end]


def test_markdown_headings_and_fenced_code():
    md = "# Guide\n\nintro\n\n## Install\n\n```\n# not a heading\n```\n\nrun it\n"
    paths = [s.heading for s in split_sections(md)]
    assert paths == [("Guide",), ("Guide", "Install")]


def test_budget_overlap_and_exact_spans(corpus_dir: Path):
    text = (corpus_dir / "faq" / "programming.rst").read_text()
    chunks = chunk_text(text, "faq/programming.rst", word_count, max_tokens=60, overlap=10)
    assert len(chunks) > 50
    for c in chunks:
        assert text[c.char_start:c.char_end] == c.text
        assert c.n_tokens <= 60 or len(c.text.split()) == 1
        assert len(c.content_hash) == 64
    # consecutive chunks of one section overlap by at most the overlap budget, and always advance
    same = [(a, b) for a, b in itertools.pairwise(chunks) if a.heading == b.heading]
    assert same and all(b.char_start > a.char_start for a, b in same)
    assert any(b.char_start < a.char_end for a, b in same), "no overlap was carried"


def test_oversized_paragraph_is_split_at_words():
    text = "Heading\n=======\n\n" + " ".join(f"word{i}" for i in range(500))
    chunks = chunk_text(text, "x.rst", word_count, max_tokens=50, overlap=0)
    assert all(c.n_tokens <= 50 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == text.split()[2:]


def test_non_utf8_document_is_read_with_a_warning():
    text, warning = decode_document("café naïve".encode("cp1252"), "notes.txt")
    assert text == "café naïve" and "not UTF-8" in warning and "notes.txt" in warning
    assert decode_document("ok ✓".encode(), "a.md") == ("ok ✓", None)
    with pytest.raises(UserError, match="binary"):
        decode_document(b"\x00\x01\x02PNG", "img.txt")


def test_tiny_budget_rejected():
    with pytest.raises(UserError, match="too small"):
        chunk_text("x", "x", word_count, max_tokens=2)
