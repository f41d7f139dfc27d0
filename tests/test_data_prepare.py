"""`slmforge data prepare`: every input format, bad inputs, PII, dedup, deterministic split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slmforge.trainer.data.pii import CLASSES, redact
from slmforge.trainer.data.prepare import PrepareOptions, prepare, split_by_document, split_pieces
from slmforge.trainer.data.textclean import html_to_text, rest_to_text

from slmforge.cli import main
from slmforge.errors import UserError

PARA = ("Python lists are mutable sequences that hold references to objects of any type, and they "
        "grow as needed when items are appended, inserted or extended from another iterable.")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _corpus(root: Path) -> Path:
    docs = root / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(f"Plain text notes.\n\n{PARA} Contact ops@acme-corp.io for access.\n")
    (docs / "b.md").write_text("# Title\n\nSee [the docs](https://x.org) and **bold** text. " + PARA + "\n")
    (docs / "c.rst").write_text("Heading\n=======\n\n.. index:: secret-index-entry\n\nUse :func:`shutil.copy` and "
                                "``open()`` with `a link <https://x.org>`_. " + PARA + "\n")
    (docs / "d.html").write_text("<html><head><style>p{}</style><script>var x=1;</script></head><body><nav>Home</nav>"
                                 f"<p>Tutorial &amp; guide. {PARA}</p></body></html>")
    (docs / "e.jsonl").write_text(json.dumps({"text": "Tuples are immutable sequences. " + PARA, "id": "t1"}) + "\n"
                                  + json.dumps({"text": "Dictionaries map hashable keys to values. " + PARA}) + "\n")
    (docs / "notes.pdf").write_bytes(b"%PDF-1.4 not read")
    return docs


def test_every_input_format_becomes_clean_text(tmp_path):
    docs = _corpus(tmp_path)
    stats = prepare([docs], tmp_path / "out", PrepareOptions(heldout_fraction=0.3, min_chars=20))
    out = tmp_path / "out"
    records = _lines(out / "train.jsonl") + _lines(out / "heldout.jsonl")
    assert stats["documents_by_format"] == {"txt": 3, "md": 1, "rst": 1, "html": 1}  # JSONL lines are txt
    assert stats["documents"] == 6 and stats["files_skipped"] == ["docs/notes.pdf"]
    assert {r["doc_id"] for r in records} == {"docs/a.txt", "docs/b.md", "docs/c.rst", "docs/d.html", "t1",
                                              "docs/e.jsonl#2"}
    text = "\n".join(r["text"] for r in records)
    assert all(set(r) == {"text", "source", "doc_id"} for r in records)
    for markup in (":func:", "``", "](", "**", "<p>", "&amp;", "var x", "secret-index-entry", "https://x.org"):
        assert markup not in text, markup
    assert "shutil.copy()" in text and "Tutorial & guide." in text and "<EMAIL>" in text
    assert stats["pii"]["EMAIL"] == 1
    manifest = json.loads((out / "slmforge.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["seed"] == 0
    assert len(manifest["inputs"][0]["sha256"]) == 64
    assert json.loads((out / "stats.json").read_text())["train_pieces"] == stats["train_pieces"]
    assert (out / "stats.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("content, message", [
    (b"caf\xe9 au lait\n", "not UTF-8"),
    (b"  \n\n", "empty file"),
])
def test_bad_file_is_one_line_and_nothing_written(tmp_path, capsys, content, message):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text(PARA)
    (docs / "bad.txt").write_bytes(content)
    code, _, err = _cli(capsys, "data", "prepare", str(docs), "--out", str(tmp_path / "out"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "bad.txt" in err and message in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_unreadable_and_broken_link(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "locked.md").write_text(PARA)
    original = Path.read_bytes

    def deny(self):
        if self.name == "locked.md":
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(UserError, match=r"locked\.md: cannot read \(Permission denied\)"):
        prepare([docs], tmp_path / "out", PrepareOptions())
    monkeypatch.undo()
    (docs / "gone.txt").symlink_to(tmp_path / "missing.txt")
    with pytest.raises(UserError, match="gone.txt: broken symbolic link"):
        prepare([docs], tmp_path / "out", PrepareOptions())
    assert not (tmp_path / "out").exists()


def test_malformed_jsonl_names_the_line(tmp_path, capsys):
    bad = tmp_path / "docs.jsonl"
    bad.write_text(json.dumps({"text": PARA}) + "\n\n{not json\n")
    code, _, err = _cli(capsys, "data", "prepare", str(bad), "--out", str(tmp_path / "out"))
    assert code == 2 and "docs.jsonl:3:" in err and "not valid JSON" in err
    bad.write_text(json.dumps({"body": PARA}) + "\n")
    code, _, err = _cli(capsys, "data", "prepare", str(bad), "--out", str(tmp_path / "out"))
    assert code == 2 and "docs.jsonl:1:" in err and '"text"' in err
    assert not (tmp_path / "out").exists()


def test_empty_input_folder(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.bin").write_bytes(b"\0")
    code, _, err = _cli(capsys, "data", "prepare", str(tmp_path / "docs"), "--out", str(tmp_path / "out"))
    assert code == 2 and "no supported documents" in err
    (tmp_path / "docs" / "a.txt").write_text(PARA)
    (tmp_path / "taken").write_text("a file")
    code, _, err = _cli(capsys, "data", "prepare", str(tmp_path / "docs"), "--out", str(tmp_path / "taken"))
    assert code == 2 and "a file is in the way" in err and (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize("text, kind", [
    ("mail Jane.Doe+lists@mail.example.co.uk today", "EMAIL"),
    ("call +1-202-555-0143 now", "PHONE"),
    ("call (555) 123-4567 now", "PHONE"),
    ("call +44 20 7946 0958 now", "PHONE"),
    ("host 192.168.10.20 is down", "IP"),
    ("host 2a02:1810:4d02:7a00::370:7334 is down", "IP"),
    ("export OPENAI_KEY sk-proj-abcdefghijklmnopqrstuvwxyz123456", "SECRET"),
    ("aws AKIAIOSFODNN7EXAMPLE", "SECRET"),
    ('api_key = "Zx8kQ2pL9vR4tY7w"', "SECRET"),
    ("blob A8f3Kq92LmZx71PqRt5VbN0cXe4WjH6s end", "SECRET"),
])
def test_pii_is_replaced_by_typed_placeholder(text, kind):
    redacted, counts = redact(text, CLASSES)  # every class on: ip is off by default
    assert counts == {kind: 1}
    assert f"<{kind}>" in redacted


@pytest.mark.parametrize("text", [
    "s[1::2] and a[::2] slices", "version 3.11.4 and novas 3.1.1.3", "localhost 127.0.0.1 and ::1",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "numbers 1000 2000 3000 and date 2023-11-23", "password = getpass.getpass()",
    "path /Users/akuchling/envs/tutorial-env/lib/python3.4/site-packages",
    "https://mail.python.org/pipermail/python-3000/2006-November/004643.html",
])
def test_technical_text_is_not_pii(text):
    assert redact(text, CLASSES) == (text, {})


def test_exact_and_near_duplicates_removed(tmp_path):
    words = [f"word{i}" for i in range(120)]
    base = " ".join(words)
    near = " ".join(words[:60] + ["changed"] + words[61:])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "1.txt").write_text(base)
    (docs / "2.txt").write_text(base.upper())  # same after case/whitespace normalization
    (docs / "3.txt").write_text(near)
    (docs / "4.txt").write_text(" ".join(reversed(words)))
    stats = prepare([docs], tmp_path / "out", PrepareOptions(heldout_fraction=0, min_chars=10, plot=False))
    assert (stats["exact_duplicates"], stats["near_duplicates"], stats["pieces_kept"]) == (1, 1, 2)
    kept = {r["doc_id"] for r in _lines(tmp_path / "out" / "train.jsonl")}
    assert kept == {"docs/1.txt", "docs/4.txt"}  # first occurrence wins
    assert not (tmp_path / "out" / "heldout.jsonl").exists()


def test_split_is_by_document_and_deterministic(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"doc{i:02d}.txt").write_text(f"Document number {i} talks about topic {i * 7}. " + PARA
                                              + f"\n\nSecond part of document {i}, distinct paragraph {i * 13}. " + PARA)
    opts = PrepareOptions(heldout_fraction=0.2, seed=3, min_chars=20, max_chars=250, plot=False)
    prepare([docs], tmp_path / "a", opts)
    prepare([docs], tmp_path / "b", opts)
    prepare([docs], tmp_path / "c", PrepareOptions(heldout_fraction=0.2, seed=4, min_chars=20, max_chars=250,
                                                   plot=False))
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train = {r["doc_id"] for r in _lines(tmp_path / "a" / "train.jsonl")}
    held = {r["doc_id"] for r in _lines(tmp_path / "a" / "heldout.jsonl")}
    assert len(held) == 4 and len(train) == 16 and not train & held
    assert {r["doc_id"] for r in _lines(tmp_path / "c" / "heldout.jsonl")} != held
    assert split_by_document(["x", "y"], 0.9, 0) in ({"x"}, {"y"})  # never every document


def test_pieces_respect_max_chars():
    text = "\n\n".join(f"Paragraph {i} " + "word " * 40 for i in range(10)) + "\n\n" + "x" * 900
    pieces = split_pieces(text, 400)
    assert all(len(p) <= 400 for p in pieces)
    assert "".join(pieces).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_rest_and_html_markup():
    rst = (".. _label:\n\nTitle\n=====\n\n.. function:: copy(src, dst)\n   :noindex:\n\n   Copy :class:`~os.PathLike`"
           " per :pep:`8`, see :ref:`the guide <guide>`.\n\n.. versionadded:: 3.8\n")
    text = rest_to_text(rst)
    assert "copy(src, dst)" in text and "Copy PathLike per PEP 8, see the guide." in text
    assert "New in version 3.8." in text and "_label" not in text and "=====" not in text
    assert ":noindex:" not in text
    html = html_to_text("<h2>Install</h2><ul><li>one</li><li>two</li></ul><pre>x = 1\n  y</pre>")
    assert "Install" in html and "* one" in html and "x = 1\n  y" in html


def test_real_corpus_prepare(tmp_path, corpus_dir):
    stats = prepare([corpus_dir / "faq"], tmp_path / "out", PrepareOptions(plot=False))
    assert stats["documents"] == 8 and stats["heldout_documents"] == 1
    text = (tmp_path / "out" / "train.jsonl").read_text() + (tmp_path / "out" / "heldout.jsonl").read_text()
    assert ":func:`" not in text and ".. _faq" not in text
