"""RAG-aware SFT examples: rendered with the runtime's own prompt, the answering passage cited, refusals taught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slmforge.runtime.answer.engine import Engine
from slmforge.runtime.bundle.build import build_bundle
from slmforge.runtime.bundle.reader import open_bundle

from slmforge.qa_records import QARecord, chunk_matches, in_section, read_qa, same_document
from slmforge.rag_prompt import DEFAULT_SYSTEM_PROMPT, NOT_IN_DOCUMENTS
from tests.conftest import run_cli
from tests.runtime_fixtures import build_tiny_embedder, make_export_dir, real_gguf, small_corpus

COPY = QARecord("How do I copy a file?", "The shutil module contains a copyfile() function.",
                "docs/faq/library.rst", "How do I copy a file?", "faq")
THREADS = QARecord("How do I program using threads?", "Be sure to use the threading module and not the _thread module.",
                   "docs/faq/library.rst", "How do I program using threads?", "faq")
NOWHERE = QARecord("What colour is the zebra's saddle in Tuesday's parade?", "Purple.",
                   "docs/faq/library.rst", "A section that does not exist", "heading")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    """The real SmolLM2 GGUF (its tokenizer and chat template) with a tiny word-level embedder over four documents."""
    tmp = tmp_path_factory.mktemp("rag")
    docs = small_corpus(corpus_dir, tmp / "docs")
    export = make_export_dir(tmp / "export", real_gguf(), build_tiny_embedder(tmp / "embedder", [docs]))
    return build_bundle(export, [docs], tmp / "bundle", progress=False).path


def write_qa(path: Path, records: list[QARecord]) -> Path:
    path.write_text("".join(json.dumps(r.record()) + "\n" for r in records))
    return path


def test_records_know_where_their_answer_lives():
    assert same_document("docs/faq/library.rst", "faq/library.rst")
    assert same_document("faq/library.rst", "docs/faq/library.rst")
    assert not same_document("docs/faq/library.rst", "docs/faq/general.rst")
    assert in_section("Library and Extension FAQ > Common tasks > How do I copy a file?", "how do I copy  a file?")
    assert not in_section("Library and Extension FAQ > Threads", "How do I copy a file?")
    # the index keeps reST inline markup and headings may hold '>' themselves
    assert in_section("Programming FAQ > Objects > Why does the result of ``id()`` appear to be not unique?",
                      "Why does the result of id() appear to be not unique?")
    assert in_section("Programming FAQ > Modules > __import__('x.y.z') returns <module 'x'>; how do I get z?",
                      "__import__('x.y.z') returns <module 'x'>; how do I get z?")
    assert not in_section("Programming FAQ > Modules", "Programming FAQ > Objects")
    assert chunk_matches(COPY, "docs/faq/library.rst", "Library and Extension FAQ > How do I copy a file?")
    assert not chunk_matches(COPY, "docs/faq/programming.rst", "How do I copy a file?")
    assert not chunk_matches(QARecord("q", "a"), "docs/faq/library.rst", "anything")  # no source: cannot be judged


def test_qa_reader_keeps_source_section_origin_and_refuses_bad_lines(tmp_path: Path):
    path = write_qa(tmp_path / "qa.jsonl", [COPY])
    assert read_qa(path) == [COPY]
    (tmp_path / "bad.jsonl").write_text('{"question": "q?"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:1: unrecognized record"):
        read_qa(tmp_path / "bad.jsonl")


def test_examples_use_the_runtime_prompt_and_cite_the_answering_passage(bundle: Path, tmp_path: Path):
    qa = write_qa(tmp_path / "qa.jsonl", [COPY, THREADS, NOWHERE])
    out = tmp_path / "rag" / "sft.jsonl"
    out.parent.mkdir()
    proc = run_cli("data", "rag", "--bundle", str(bundle), "--qa", str(qa), "--out", str(out), "--k", "3",
                   "--unanswerable-share", "0", "--seq-len", "1024", "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["examples"] == 2 and stats.get("dropped_no_passage", 0) + stats.get("dropped_not_retrieved", 0) == 1
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    with Engine(open_bundle(bundle), n_ctx=1024) as engine:
        for ex, ref in zip(examples, [COPY, THREADS]):
            system, user, assistant = ex["messages"]
            assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
            assert user["content"].startswith("Context:\n[1] ") and user["content"].endswith(f"Question: {ref.question}")
            assert assistant["content"].startswith(ref.answer)
            cited = int(assistant["content"].rsplit("[", 1)[1].rstrip("]"))
            # the cited block is the passage that holds the answer
            block = user["content"].split(f"[{cited}] ", 1)[1].split("\n", 1)[0]
            source, heading = block.split(" — ", 1)
            assert chunk_matches(ref, source, heading), block
            # the same question through the runtime renders the same context block the same way
            plan, _ = engine.plan(ref.question, k=3)
            if any(chunk_matches(ref, h.source, h.heading) for h in plan.hits):
                assert plan.messages[1]["content"] == user["content"]
    manifest = json.loads((tmp_path / "rag" / "sft.slmforge.json").read_text())
    assert manifest["stage"] == "rag" and manifest["metrics"]["examples"] == 2


def test_unanswerable_examples_hold_no_answering_passage(bundle: Path, tmp_path: Path):
    qa = write_qa(tmp_path / "qa.jsonl", [COPY, THREADS] * 3)
    out = tmp_path / "sft.jsonl"
    proc = run_cli("data", "rag", "--bundle", str(bundle), "--qa", str(qa), "--out", str(out), "--k", "3",
                   "--unanswerable-share", "0.5", "--seed", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    refusals = [e for e in examples if e["messages"][-1]["content"] == NOT_IN_DOCUMENTS]
    assert refusals and len(refusals) < len(examples)
    for ex in refusals:
        ref = COPY if ex["section"] == COPY.section else THREADS
        heads = [line.split("] ", 1)[1] for line in ex["messages"][1]["content"].splitlines()
                 if line.startswith("[") and "] " in line]
        assert heads and not any(chunk_matches(ref, *h.split(" — ", 1)) for h in heads)


def test_heldout_generated_questions_need_a_retrievable_passage(bundle: Path, tmp_path: Path):
    qa = write_qa(tmp_path / "qa.jsonl", [COPY])
    held = write_qa(tmp_path / "held.jsonl", [THREADS, NOWHERE])
    proc = run_cli("data", "rag", "--bundle", str(bundle), "--qa", str(qa), "--out", str(tmp_path / "sft.jsonl"),
                   "--heldout", str(held), "--heldout-out", str(tmp_path / "held.kept.jsonl"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert read_qa(tmp_path / "held.kept.jsonl") == [THREADS]  # the authored FAQ one stays, the unfindable one goes


@pytest.mark.parametrize("content", ["", "not json\n", '{"messages": [{"role": "user", "content": "q"}]}\n'])
def test_bad_qa_files_are_one_line_and_write_nothing(bundle: Path, tmp_path: Path, content: str):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(content)
    out = tmp_path / "sft.jsonl"
    proc = run_cli("data", "rag", "--bundle", str(bundle), "--qa", str(qa), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not out.exists()


def test_not_a_bundle_is_refused(tmp_path: Path):
    qa = write_qa(tmp_path / "qa.jsonl", [COPY])
    proc = run_cli("data", "rag", "--bundle", str(tmp_path), "--qa", str(qa), "--out", str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr


def _hit(chunk_id: int, source: str, heading: str, text: str):
    from slmforge.runtime.index.store import Hit

    return Hit(chunk_id=chunk_id, source=source, heading=heading, text=text, score=0.0, vec_score=None, bm25_rank=None)


def test_a_passage_that_answers_is_never_the_distractor_of_an_unanswerable_example():
    """A near-duplicate section (another page saying the same) answers the question: with it in a context labelled
    "the documents do not cover this", the model learns to refuse answerable questions."""
    import random

    from slmforge.runtime.answer.rag_examples import ExampleBuilder, RagOptions, answers_anyway

    gold = _hit(1, "docs/faq/library.rst", "Library and Extension FAQ > How do I copy a file?",
                "The shutil module contains a copyfile() function.")
    twin = _hit(2, "docs/library/shutil.rst", "shutil > Directory and files operations",
                "shutil.copyfile(src, dst): the shutil module copies the contents of a file; see the function copy().")
    other = [_hit(3 + i, "docs/faq/general.rst", f"General FAQ > Q{i}", f"Python {i} was released with new syntax.")
             for i in range(5)]
    assert answers_anyway(COPY, twin) and not answers_anyway(COPY, other[0])
    builder = ExampleBuilder.__new__(ExampleBuilder)
    builder.opts = RagOptions(k=3, unanswerable_share=1.0)
    builder.candidates = lambda question, extra=0: [gold, twin, *other]
    seen: list[list[int]] = []

    def render(ref, chunks, answer, gold_id):
        seen.append([h.chunk_id for h in chunks])
        return {"messages": [{"role": "assistant", "content": answer}]}, True

    builder.render = render
    example, what = builder.example(COPY, random.Random(0))
    assert what == "unanswerable_answering_dropped" and seen == [[3, 4, 5]]
    assert example["messages"][-1]["content"] == NOT_IN_DOCUMENTS
    # when every other passage answers too, there is no honest unanswerable example to make
    builder.candidates = lambda question, extra=0: [gold, twin]
    assert builder.example(COPY, random.Random(0)) == (None, "dropped_every_passage_answers")


def test_unanswerable_from_other_documents_takes_no_passage_of_the_question_s_own_page():
    """The question's own page, other sections included, is left out of its "not covered" context: neighbouring
    sections half-answer it, and a model taught to refuse beside them refuses answerable questions."""
    import random

    from slmforge.runtime.answer.rag_examples import ExampleBuilder, RagOptions

    gold = _hit(1, "docs/faq/library.rst", "Library and Extension FAQ > How do I copy a file?",
                "The shutil module contains a copyfile() function.")
    sibling_sections = [_hit(2 + i, "docs/faq/library.rst", f"Library and Extension FAQ > Q{i}",
                             f"Threads number {i} run one at a time.") for i in range(3)]
    elsewhere = [_hit(10 + i, "docs/faq/general.rst", f"General FAQ > Q{i}", f"Python {i} was released with new syntax.")
                 for i in range(4)]
    builder = ExampleBuilder.__new__(ExampleBuilder)
    builder.opts = RagOptions(k=3, unanswerable_share=1.0, unanswerable_from="other-documents")
    builder.candidates = lambda question, extra=0: [gold, *sibling_sections, *elsewhere]
    builder.render = lambda ref, chunks, answer, gold_id: ({"ids": [h.chunk_id for h in chunks], "answer": answer}, True)
    example, what = builder.example(COPY, random.Random(0))
    assert what == "unanswerable" and example == {"ids": [10, 11, 12], "answer": NOT_IN_DOCUMENTS}
    builder.opts = RagOptions(k=3, unanswerable_share=1.0)  # the default: every section but the question's own
    example, what = builder.example(COPY, random.Random(0))
    assert what == "unanswerable" and example == {"ids": [2, 3, 4], "answer": NOT_IN_DOCUMENTS}
