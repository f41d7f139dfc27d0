"""`slmforge data qa`: FAQ extraction (real FAQ, Markdown, HTML, Q:/A:), JSONL conversion, held-out split."""

from __future__ import annotations

import json

import pytest
from slmforge.trainer.data.qa.build import build_qa
from slmforge.trainer.data.qa.faq import extract_pairs

from slmforge.cli import main
from slmforge.errors import UserError


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_real_faq_programming_and_library(corpus_dir):
    programming = extract_pairs((corpus_dir / "faq" / "programming.rst").read_text(), "rst", "programming.rst")
    questions = {p.question: p.answer for p in programming}
    assert len(programming) >= 60
    answer = questions["How do I copy an object in Python?"]
    assert answer.startswith("In general, try copy.copy() or copy.deepcopy()")
    assert "`" not in answer and ":func:" not in answer
    assert "Is there a source code level debugger with breakpoints, single-stepping, etc.?" in questions
    library = extract_pairs((corpus_dir / "faq" / "library.rst").read_text(), "rst", "library.rst")
    copy_file = next(p.answer for p in library if p.question == "How do I copy a file?")
    assert "copyfile()" in copy_file and "shutil.copy2()" in copy_file
    assert "See the next question." not in {p.answer for p in programming}


def test_qa_on_real_corpus_writes_split_and_manifest(tmp_path, corpus_dir):
    out = tmp_path / "qa" / "qa.jsonl"
    stats = build_qa([corpus_dir / "faq"], out, heldout_fraction=0.1, seed=0)
    assert stats["pairs"] >= 170
    train, held = _lines(out), _lines(tmp_path / "qa" / "qa.heldout.jsonl")
    assert len(train) + len(held) == stats["pairs"] and len(held) == round(0.1 * stats["pairs"])
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in held}
    roles = {tuple(m["role"] for m in r["messages"]) for r in train}
    assert roles == {("user", "assistant")}
    manifest = json.loads((tmp_path / "qa" / "qa.slmforge.json").read_text())
    assert manifest["stage"] == "qa" and manifest["metrics"]["pairs"] == stats["pairs"]
    again = tmp_path / "again.jsonl"
    build_qa([corpus_dir / "faq"], again, heldout_fraction=0.1, seed=0)
    assert again.read_bytes() == out.read_bytes()


def test_markdown_html_and_plain_text_faqs(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text("# FAQ\n\n## How do I reset my password?\n\nOpen **Settings** and pick "
                                 "[Reset](https://x.org).\n\n### Details\n\nIt takes a minute to arrive.\n\n"
                                 "## About us\n\nNot a question here at all, just prose.\n\n"
                                 "```\n# not a heading?\n```\n")
    (docs / "faq.html").write_text("<h1>Help</h1><h2>Where are logs stored?</h2><p>Under /var/log/app on Linux "
                                   "systems.</p><h2>Contact</h2><p>Nothing to see.</p>")
    (docs / "faq.txt").write_text("Q: Can I run it offline?\nA: Yes, every model file is local to the device.\n\n"
                                  "Q: Does it need a GPU?\nA: No, it runs on the CPU of a laptop.\n")
    stats = build_qa([docs], tmp_path / "qa.jsonl", heldout_fraction=0)
    pairs = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in _lines(tmp_path / "qa.jsonl")}
    assert set(pairs) == {"How do I reset my password?", "Where are logs stored?", "Can I run it offline?",
                          "Does it need a GPU?"}
    assert pairs["How do I reset my password?"] == ("Open Settings and pick Reset.\n\nDetails\n\n"
                                                    "It takes a minute to arrive.")
    assert stats["heldout_pairs"] == 0 and not (tmp_path / "qa.heldout.jsonl").exists()


def test_alpaca_messages_and_question_answer_jsonl(tmp_path):
    src = tmp_path / "sft.jsonl"
    rows = [{"instruction": "Translate to French", "input": "cat", "output": "chat"},
            {"instruction": "Say hi", "output": "hi"},
            {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]},
            {"question": "Capital of France?", "answer": "Paris"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_qa([src], tmp_path / "qa.jsonl", heldout_fraction=0)
    out = _lines(tmp_path / "qa.jsonl")
    assert [r["messages"] for r in out] == [
        [{"role": "user", "content": "Translate to French\n\ncat"}, {"role": "assistant", "content": "chat"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
    ]
    assert out[0]["source"] == "sft.jsonl:1"


@pytest.mark.parametrize("line, message", [
    ('{"instruction": "x", "output": 3}', "sft.jsonl:2: alpaca fields"),
    ('{"prompt": "x"}', "sft.jsonl:2: unrecognized record"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "sft.jsonl:2: messages must"),
    ("[1, 2]", "sft.jsonl:2: expected a JSON object"),
    ('{"instruction": "x", "output": "y"', "sft.jsonl:2: not valid JSON"),
])
def test_bad_jsonl_line_is_named(tmp_path, capsys, line, message):
    src = tmp_path / "sft.jsonl"
    src.write_text('{"instruction": "ok", "output": "fine"}\n' + line + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["data", "qa", str(src), "--out", str(tmp_path / "qa.jsonl")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "qa.jsonl").exists()


def test_no_questions_is_an_error(tmp_path):
    (tmp_path / "notes.md").write_text("# Notes\n\nJust prose without any question headings at all.\n")
    with pytest.raises(UserError, match="no question/answer pairs"):
        build_qa([tmp_path / "notes.md"], tmp_path / "qa.jsonl")
    assert not (tmp_path / "qa.jsonl").exists()
    with pytest.raises(UserError, match="is a folder"):
        build_qa([tmp_path / "notes.md"], tmp_path)
