"""`data qa --generate`: pairs from headings, definitions and procedures on a tiny hand-made corpus."""

from __future__ import annotations

import json

import pytest
from slmforge.trainer.data.qa.build import GenerateOptions, build_qa
from slmforge.trainer.data.qa.generate import generate_pairs
from slmforge.trainer.data.qa.questions import heading_question, verb_of
from slmforge.trainer.data.qa.teacher import parse_reply

from slmforge.cli import main

GUIDE_RST = """\
Pump handbook
=============

Reading and Writing Settings
----------------------------

You read and write the pump's settings through the control panel, which stores them
in flash memory. Changes take effect after the next restart of the controller.

Impeller Blades
---------------

An impeller is a rotating disc with curved blades that moves water through the housing. It is
made of bronze on the large models.

Priming
-------

The housing must hold water before the motor starts.

To prime the pump, close the drain valve and run::

   pump prime --slow

Contents
--------

This page lists every chapter of the handbook and the pages where each one starts.

Footnotes
---------

The flow figures were measured at sea level with clean water at twenty degrees.

API
---

.. module:: pumpctl

.. function:: drain(seconds)

   Open the drain valve for *seconds* seconds and close it again. Returns the litres drained.
"""


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _qa(pairs):
    return {p.question: p for p in pairs}


@pytest.mark.parametrize("title, question", [
    ("Reading and Writing Files", "How do I read and write files?"),
    ("Creating Virtual Environments", "How do I create virtual environments?"),
    ("Class Objects", "What are class objects?"),
    ("The Module Search Path", "What is the module search path?"),
    ("shutil.copy()", "What does shutil.copy() do?"),
    ("The range() Function", "What does range() do?"),
    ("shutil --- High-level file operations", "What is the shutil module for?"),
    ("How to reset your password", "How do I reset my password?"),
    ("Deploy your app", "How do I deploy my app?"),
    ("Looping Techniques", "What are looping techniques?"),
    ("Contents", None), ("Footnotes", None), ("Notes", None), ("See also", None), ("Index", None),
    ("1.2", None), ("Examples", None), ("Sets", None), ("General Questions", None), ("Library FAQ", None),
    ("How do I copy a file?", None),  # a FAQ heading: faq.py's pair, not a generated one
])
def test_heading_shapes(title, question):
    assert heading_question(title) == question


@pytest.mark.parametrize("gerund, verb", [("reading", "read"), ("writing", "write"), ("creating", "create"),
                                          ("running", "run"), ("handling", "handle"), ("installing", "install"),
                                          ("configuring", "configure"), ("saving", "save"), ("using", "use"),
                                          ("inheriting", "inherit"), ("adding", "add"), ("loading", "load")])
def test_gerund_to_verb(gerund, verb):
    assert verb_of(gerund) == verb


def test_each_generator_kind_on_known_sections():
    pairs = generate_pairs(GUIDE_RST, "rst", "docs/guide.rst")
    by_q = _qa(pairs)
    heading = by_q["How do I read and write settings?"]
    assert heading.origin == "heading" and heading.section == "Reading and Writing Settings"
    assert heading.answer.startswith("You read and write the pump's settings through the control panel")
    assert heading.answer.endswith("after the next restart of the controller.")
    definition = by_q["What is an impeller?"]
    assert definition.origin == "definition" and definition.section == "Impeller Blades"
    assert definition.answer == ("An impeller is a rotating disc with curved blades that moves water through the "
                                 "housing. It is made of bronze on the large models.")
    procedure = by_q["How do I prime the pump?"]
    assert procedure.origin == "procedure" and procedure.section == "Priming"
    assert procedure.answer.startswith("To prime the pump, close the drain valve and run:")
    assert "pump prime --slow" in procedure.answer
    api = by_q["What does pumpctl.drain() do?"]
    assert api.origin == "definition" and api.answer.startswith("Open the drain valve for seconds seconds")
    assert {p.source for p in pairs} == {"docs/guide.rst"}


def test_headings_that_make_no_question_are_skipped():
    pairs = generate_pairs(GUIDE_RST, "rst", "guide.rst")
    assert not [p for p in pairs if p.section in ("Contents", "Footnotes")]
    assert all(4 <= len(p.question.split()) + 1 <= 26 and p.question.endswith("?") for p in pairs)


def test_markdown_code_stays_code_and_bounded_answers():
    text = ("# Tool\n\n## Installing the Tool\n\nInstall the tool from the package index with pip, then check the "
            "version it reports.\n\n## Long Section\n\n" + "Each line carries some words about the long section. "
            * 30 + "\n\n## Building from source\n\nTo build from source, clone the repository and run:\n\n"
            "```bash\nmake build\n\nmake install\n```\n")
    by_q = _qa(generate_pairs(text, "md", "tool.md"))
    assert by_q["How do I install the tool?"].answer.startswith("Install the tool from the package index")
    long_answer = by_q["What is long section?"].answer
    assert len(long_answer) <= 500 and len(long_answer.split(". ")) == 4 and long_answer.endswith(".")
    build = by_q["How do I build from source?"].answer
    assert "    make build" in build and "    make install" in build and "```" not in build


def _corpus(tmp_path, docs=6):
    root = tmp_path / "manuals"
    root.mkdir()
    for n in range(docs):
        (root / f"unit{n}.md").write_text(
            f"# Unit {n} manual\n\n## Cleaning the Filter {n}\n\nYou clean the filter {n} by rinsing it under warm "
            f"water for a minute and letting it dry in the sun.\n\n## Valve Type {n}\n\nA valve{n} is a flap that "
            f"stops water flowing back into the tank {n} when the motor halts.\n")
    return root


def test_heldout_split_by_whole_document_and_records_carry_their_place(tmp_path):
    root = _corpus(tmp_path)
    out = tmp_path / "qa" / "qa.jsonl"
    stats = build_qa([root], out, heldout_fraction=0.34, seed=3)
    train, held = _records(out), _records(tmp_path / "qa" / "qa.heldout.jsonl")
    assert held and train and stats["generated"]["split"] == "by_document"
    assert not {r["source"] for r in train} & {r["source"] for r in held}
    assert {r["source"] for r in held} == set(stats["generated"]["heldout_documents"])
    for r in train + held:
        assert r["source"].startswith("manuals/unit") and r["origin"] in ("heading", "definition", "procedure")
        assert r["section"] and r["messages"][0]["role"] == "user"
    assert stats["pairs_by_origin"]["heading"] == 12 and stats["samples"]["heading"]
    again = tmp_path / "again.jsonl"
    build_qa([root], again, heldout_fraction=0.34, seed=3)
    assert again.read_bytes() == out.read_bytes()


def test_near_duplicate_questions_are_dropped(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    body = "\n\nYou clean the filter by rinsing it under warm water and letting it dry before use.\n"
    (root / "a.md").write_text("# A\n\n## Cleaning the Filter" + body)
    (root / "b.md").write_text("# B\n\n## Cleaning the Filters" + body.replace("warm", "cold"))
    stats = build_qa([root], tmp_path / "qa.jsonl", heldout_fraction=0)
    questions = [r["messages"][0]["content"] for r in _records(tmp_path / "qa.jsonl")]
    assert questions == ["How do I clean the filter?"]
    assert stats["generated"]["duplicate_questions"] == 1


def test_generate_never_keeps_faq_only_and_auto_adds_to_documents_without_faq(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.md").write_text("# FAQ\n\n## How do I reset the pump?\n\nHold the reset button for ten seconds.\n\n"
                                 "## About the pump\n\nThe pump is a compact device that moves water from the well into the tank of "
                                 "the house.\n")
    (docs / "guide.md").write_text("# Guide\n\n## Cleaning the Filter\n\nYou clean the filter by rinsing it under "
                                   "warm water and letting it dry before use.\n")
    never = build_qa([docs], tmp_path / "never.jsonl", heldout_fraction=0, generate=GenerateOptions(mode="never"))
    auto = build_qa([docs], tmp_path / "auto.jsonl", heldout_fraction=0)
    always = build_qa([docs], tmp_path / "always.jsonl", heldout_fraction=0, generate=GenerateOptions(mode="always"))
    assert [r["messages"][0]["content"] for r in _records(tmp_path / "never.jsonl")] == ["How do I reset the pump?"]
    assert never["pairs_by_origin"] == {"faq": 1}
    faq = _records(tmp_path / "never.jsonl")[0]
    assert faq["source"] == "docs/faq.md" and faq["section"] == "How do I reset the pump?" and faq["origin"] == "faq"
    # auto: the FAQ document keeps only its FAQ pair; the guide (no FAQ) gets generated ones
    assert {(r["source"], r["origin"]) for r in _records(tmp_path / "auto.jsonl")} == {
        ("docs/faq.md", "faq"), ("docs/guide.md", "heading")}
    assert auto["generated"]["documents"] == 1 and always["generated"]["documents"] == 2
    assert "docs/faq.md" in {r["source"] for r in _records(tmp_path / "always.jsonl") if r["origin"] != "faq"}


def test_faq_split_is_the_same_with_and_without_generation(tmp_path, corpus_dir):
    never = tmp_path / "never" / "qa.jsonl"
    auto = tmp_path / "auto" / "qa.jsonl"
    build_qa([corpus_dir / "faq", corpus_dir / "tutorial"], never, seed=0, generate=GenerateOptions(mode="never"))
    stats = build_qa([corpus_dir / "faq", corpus_dir / "tutorial"], auto, seed=0)
    for name in ("qa.jsonl", "qa.heldout.jsonl"):
        faq_never = [r for r in _records(never.parent / name)]
        faq_auto = [r for r in _records(auto.parent / name) if r["origin"] == "faq"]
        assert faq_never == faq_auto
    assert stats["pairs_by_origin"]["heading"] > 0


@pytest.mark.parametrize("content", [None, b"not a model at all"])
def test_teacher_that_is_not_a_gguf_is_one_line(tmp_path, capsys, content):
    (tmp_path / "guide.md").write_text("# Guide\n\n## How do I start?\n\nPress the green button once.\n")
    teacher = tmp_path / "teacher.gguf"
    if content is not None:
        teacher.write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        main(["data", "qa", str(tmp_path / "guide.md"), "--out", str(tmp_path / "qa.jsonl"), "--teacher", str(teacher)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--teacher" in err
    assert not (tmp_path / "qa.jsonl").exists()


def test_teacher_replies_are_parsed_strictly():
    passage = "The pump must be primed before first use. Fill the housing with water and close the cap tightly."
    good = "Question: How do I prime the pump?\nAnswer: Fill the housing with water and close the cap tightly."
    assert parse_reply(good, passage) == ("How do I prime the pump?",
                                          "Fill the housing with water and close the cap tightly.")
    assert parse_reply("The passage explains priming.", passage) is None  # no format
    assert parse_reply("Question: How do I prime the pump?", passage) is None  # no answer
    assert parse_reply("Question: How do I prime the pump?\nAnswer: Buy a new turbocharged diesel engine from "
                       "a dealer nearby.", passage) is None  # not in the passage
    assert parse_reply("Question: How do I prime the pump?\nAnswer: Prime the pump.", passage) is None  # echo


@pytest.mark.integration
def test_teacher_gguf_runs_end_to_end(tmp_path):
    """The embedded SmolLM2-135M as teacher on two passages: it loads, reads, and whatever it writes is
    either a well-formed grounded pair (origin 'teacher') or dropped. (At 135M it rarely writes one.)"""
    from tests.runtime_fixtures import real_gguf

    (tmp_path / "guide.md").write_text(
        "# Guide\n\n## Priming\n\nThe pump must be primed before first use. To prime it, fill the housing with water, "
        "close the cap and wait one minute before starting the motor. A pump that runs dry wears its seal within "
        "an hour and must then be repaired by the service centre.\n\n## Storage\n\nStore the pump in a dry room "
        "above freezing. Drain the housing first, because water left inside expands when it freezes and cracks "
        "the casing, which voids the warranty. Cover the inlet so that dust and insects stay out of it.\n")
    stats = build_qa([tmp_path / "guide.md"], tmp_path / "qa.jsonl", heldout_fraction=0,
                     generate=GenerateOptions(teacher=real_gguf(), teacher_limit=2))
    assert stats["generated"]["teacher"]["passages"] == 2
    taught = [r for r in _records(tmp_path / "qa.jsonl") if r["origin"] == "teacher"]
    assert len(taught) <= stats["generated"]["teacher"]["parsed"] <= 2
    for r in taught:
        assert r["messages"][0]["content"].endswith("?") and r["source"] == "guide.md"
