"""`slmforge eval`: its metrics on hand-made answers, the CLI end to end on a tiny bundle, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from slmforge.bench.eval_report import gain_line
from slmforge.bench.metrics import (
    citation_judgement,
    content_words,
    groundedness,
    is_refusal,
    paired_bootstrap,
    rouge_l,
    token_f1,
)

from slmforge.qa_records import QARecord
from slmforge.rag_prompt import NOT_IN_DOCUMENTS, cited_numbers, strip_citations
from tests.conftest import run_cli
from tests.runtime_fixtures import build_tiny_embedder, fake_model_export, make_export_dir, small_corpus

# -- metrics on hand-made answers ---------------------------------------------------------------------------


def test_f1_and_rouge_l_against_the_reference():
    assert token_f1("Use shutil.copyfile()", "use shutilcopyfile") == 1.0  # SQuAD normalization
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # same words, reversed order: token F1 cannot tell, ROUGE-L (longest common subsequence) can
    assert token_f1("copy file shutil", "shutil file copy") == 1.0
    assert rouge_l("copy file shutil", "shutil file copy") == pytest.approx(1 / 3)
    assert rouge_l("cat sat mat", "cat on mat") == pytest.approx(2 / 3)  # LCS "cat mat": P = R = 2/3
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0 and rouge_l("a b", "c d") == 0.0


def test_answer_scores_ignore_citation_markers():
    from slmforge.bench.metrics import answer_scores

    plain = answer_scores("Use shutil.copyfile to copy the file.", "Use shutil.copyfile to copy the file.")
    cited = answer_scores("Use shutil.copyfile [1] to copy the file [2, 3].", "Use shutil.copyfile to copy the file.")
    assert plain == cited == {"f1": 1.0, "rouge_l": 1.0}


def test_citation_markers_are_told_from_code_and_echoed_headers():
    assert cited_numbers("See [2] and [1][3]; also [4, 2].") == [2, 1, 3, 4]
    assert cited_numbers("Index with x[1] or `a = [1, 2]` or\n```\nb = [3]\n```") == []
    echo = "The answer is:\n\n[1] faq/library.rst — Library FAQ > How do I copy a file?\nshutil copies it [2]."
    assert cited_numbers(echo) == [2]
    assert strip_citations("Copy it [1]. Code `x[1]` stays.") == "Copy it . Code `x[1]` stays."


def test_citation_accuracy_cases():
    matches = [False, True, False]  # the 2nd context chunk holds the reference's section
    assert citation_judgement("It is shutil.copyfile [2].", matches) == (True, True)
    assert citation_judgement("It is shutil.copyfile [1][3].", matches) == (True, False)
    assert citation_judgement("It is shutil.copyfile [7].", matches) == (True, False)  # cites nothing real
    assert citation_judgement("It is shutil.copyfile.", matches) == (False, None)  # no citation: not judged
    assert citation_judgement("It is shutil.copyfile [2].", None) == (True, None)  # no source: not judged


def test_citations_are_judged_as_shown_and_as_generated():
    from slmforge.bench.evaluate import Reply, score_rag

    ref = QARecord("How do I copy a file?", "Use shutil.copyfile.", source="faq/library.rst",
                   section="How do I copy a file?")
    reply = Reply(text="Use shutil.copyfile. [2]", generated="Use shutil.copyfile. [1]",
                  chunks=[("faq/programming.rst", "How do I copy an object?"),
                          ("faq/library.rst", "Library FAQ > How do I copy a file?")])
    row = score_rag(ref, reply)
    assert row["citation_accurate"] is True and row["citation_accurate_as_generated"] is False
    assert row["f1"] == 1.0  # markers never count towards F1


def test_chunk_matching_decides_hits():
    from slmforge.qa_records import chunk_matches

    ref = QARecord("How do I copy a file?", "shutil", source="docs/faq/library.rst", section="How do I copy a file?")
    assert chunk_matches(ref, "faq/library.rst", "Library and Extension FAQ > How do I copy a file?")
    assert not chunk_matches(ref, "faq/library.rst", "Library and Extension FAQ > How do I delete a file?")
    assert not chunk_matches(QARecord("q", "a"), "faq/library.rst", "x")


def test_groundedness_counts_content_words_found_in_the_context():
    context = "[1] faq/library.rst — How do I copy a file?\nshutil.copyfile(src, dst) copies the data of a file."
    assert content_words("The copyfile function [1] is in the shutil module!") == ["copyfile", "function", "shutil",
                                                                                   "module"]
    assert groundedness("shutil.copyfile copies the file [1].", context) == 1.0
    assert groundedness("Use the pickle module to serialize it.", context) == 0.0
    assert groundedness("Use shutil.copyfile or pickle.", context) == pytest.approx(2 / 3)  # "use" is a stop word
    assert groundedness("It is [1].", context) is None  # no content word: not judged
    # restating the question's words proves nothing: only the other words count
    assert groundedness("To copy a file use the pickle module.", context, "How do I copy a file?") == 0.0
    assert groundedness("Copy the file.", context, "How do I copy a file?") is None


@pytest.mark.parametrize("answer", [
    NOT_IN_DOCUMENTS, "The documents don't cover this question.", "I don't know.",
    "I'm sorry, but I cannot answer that from the provided context.",
    "The context does not contain any information about lasagna.", "There is no information about that.",
    "Sorry. The provided documents do not mention tennis.", "",
])
def test_refusals_are_detected(answer: str):
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", [
    "Use shutil.copyfile(src, dst) [1].", "Python has no information hiding; use a leading underscore.",
    "A lambda cannot hold statements. The grammar does not allow it, and the documents explain why [1].",
    "Lasagna needs pasta, tomato sauce and cheese.",
])
def test_answers_are_not_refusals(answer: str):
    assert not is_refusal(answer)


def test_bootstrap_contains_zero_for_equal_systems_and_excludes_it_for_a_clear_gain():
    same = [0.2, 0.5, 0.1, 0.9, 0.4, 0.3]
    equal = paired_bootstrap(same, same)
    assert equal["mean"] == 0 and equal["ci95_low"] <= 0 <= equal["ci95_high"] and not equal["significant"]
    noisy = paired_bootstrap([0.3, 0.1, 0.4, 0.0, 0.2], [0.1, 0.3, 0.2, 0.2, 0.2])
    assert noisy["ci95_low"] < 0 < noisy["ci95_high"] and not noisy["significant"]
    gain = paired_bootstrap([0.6 + 0.01 * i for i in range(30)], [0.2 + 0.015 * i for i in range(30)])
    assert gain["ci95_low"] > 0 and gain["significant"]


def test_gain_line_reads_the_eval_json():
    result = {"baseline": "base", "questions": 54, "systems": {
        "base": {"f1": 0.21, "citation_accuracy": 0.4}, "adapted": {"f1": 0.45, "citation_accuracy": 0.85}},
        "comparisons": [
            {"system": "adapted", "metric": "f1", "delta": 0.24, "ci95": [0.18, 0.30], "significant": True},
            {"system": "adapted", "metric": "citation_accuracy", "delta": None, "ci95": None, "significant": False}]}
    assert gain_line(result) == ("adapted vs base (+RAG, 54 questions): F1 0.21 → 0.45 (+0.24, 95 % CI +0.18..+0.30), "
                                 "citation accuracy 0.40 → 0.85")
    alone = {**result, "baseline": None, "systems": {"base": result["systems"]["base"]}, "comparisons": []}
    assert gain_line(alone) == "base (+RAG, 54 questions): F1 0.21, citation accuracy 0.40 (no baseline to compare with)"


# -- the command on a tiny bundle ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundles(tiny_checkpoint: Path, corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random model that really generates, bundled with a tiny embedder over a few real documents;
    and a bundle whose embedder has other weights (never loaded: eval refuses it first)."""
    from slmforge.export.gguf_writer import write_gguf
    from slmforge.runtime.bundle.build import build_bundle

    tmp = tmp_path_factory.mktemp("eval")
    docs = small_corpus(corpus_dir, tmp / "docs")
    gguf = tmp / "model-F16.gguf"
    write_gguf(tiny_checkpoint, gguf, "F16", source_sha256="ab" * 32, progress=False)
    emb = build_tiny_embedder(tmp / "embedder", [docs])
    export = make_export_dir(tmp / "export", gguf, emb, quant="F16")
    tiny = build_bundle(export, [docs], tmp / "tiny", max_tokens=6, n_ctx=512, progress=False).path
    other_emb = build_tiny_embedder(tmp / "embedder2", [docs], seed=1)
    other = build_bundle(fake_model_export(tmp / "export2", other_emb), [docs], tmp / "other", progress=False).path
    return {"tiny": tiny, "other": other}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qa") / "qa.heldout.jsonl"
    records = [
        QARecord("How do I copy a file?", "Use shutil.copyfile() or shutil.copy().", "faq/library.rst",
                 "How do I copy a file?", "faq"),
        QARecord("How do I delete a file?", "Use os.remove(filename) or os.unlink(filename).", "faq/library.rst",
                 None, "faq"),
        QARecord("How do I read a line from a file?", "Call readline() on the file object.", None, None, "file"),
    ]
    path.write_text("".join(json.dumps(r.record()) + "\n" for r in records))
    return path


def test_eval_of_a_bundle_against_itself(tiny_bundles: dict[str, Path], heldout: Path, tmp_path: Path):
    probes = tmp_path / "probes.txt"
    probes.write_text("# off-domain\nWhat is a good recipe for lasagna?\nWho won the tennis final?\n")
    out = tmp_path / "evalrun"
    proc = run_cli("eval", str(tiny_bundles["tiny"]), "--baseline", str(tiny_bundles["tiny"]), "--qa", str(heldout),
                   "--out", str(out), "--probes", str(probes), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "8/8" in proc.stderr and "answer" in proc.stderr  # the bar: one bundle answers 3 × 2 questions + 2 probes
    assert proc.stdout.strip().splitlines()[-1].startswith("tiny-2 vs tiny (+RAG, 3 questions): F1 ")
    assert "answer F1" in proc.stdout and "hit@4" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["baseline"] == "tiny" and set(result["systems"]) == {"tiny", "tiny-2"}
    assert result["summary"] == proc.stdout.strip().splitlines()[-1]  # what the pipeline and the demo print
    assert result["questions"] == 3 and result["k"] == 4 and len(result["qa"]["sha256"]) == 64
    assert result["bundles"]["tiny"]["quant"] == "F16" and result["bundles"]["tiny"]["model"] == "model-F16.gguf"
    metrics = result["systems"]["tiny"]
    for name in ("f1", "rouge_l", "hit_at_k", "citation_rate", "groundedness", "answer_rate_in_domain", "refusal_rate",
                 "closed_book_f1", "answer_tokens", "ttft_ms", "decode_tok_s"):
        assert name in metrics
    assert 0 <= metrics["f1"] <= 1 and 0 < metrics["answer_tokens"] <= 6
    assert result["counts"]["tiny"]["no_source"] == 1  # the third question names no source: hit@k not judged
    compared = {c["metric"]: c for c in result["comparisons"]}
    assert set(compared) == {"f1", "rouge_l", "hit_at_k", "citation_accuracy", "groundedness", "closed_book_f1"}
    for c in compared.values():
        assert c["system"] == "tiny-2"
        assert c["n"] == 0 or (c["delta"] == 0 and c["ci95"] == [0, 0])
    assert compared["f1"]["n"] == 3 and compared["hit_at_k"]["n"] == 2
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["heldout"] * 3 + ["probe"] * 2
    first = rows[0]["systems"]["tiny"]
    assert first["rag"]["answer"] == rows[0]["systems"]["tiny-2"]["rag"]["answer"]
    assert 1 <= len(first["rag"]["context"]) <= 4 and "closed_book" in first and "f1" in first["rag"]["metrics"]
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_json_without_closed_book(tiny_bundles: dict[str, Path], heldout: Path):
    proc = run_cli("eval", str(tiny_bundles["tiny"]), "--qa", str(heldout), "--json", "--no-closed-book",
                   "--limit", "1", "--k", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["baseline"] is None and result["comparisons"] == [] and result["questions"] == 1
    assert result["k"] == 2 and result["systems"]["tiny"]["closed_book_f1"] is None
    assert result["probes"] == {"source": "default", "count": 10}


# -- bad input: one line, exit 2, nothing written ----------------------------------------------------------


def _bad(args: list[str], out: Path, expect: str) -> None:
    proc = run_cli("eval", *args, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert not out.exists() and not list(out.parent.glob(f"{out.name}*"))


def test_bad_qa_files(tiny_bundles: dict[str, Path], tmp_path: Path):
    bundle = str(tiny_bundles["tiny"])
    out = tmp_path / "o" / "run"
    (tmp_path / "o").mkdir()
    cases = {"missing.jsonl": None, "empty.jsonl": "", "notjson.jsonl": "question: what?\n",
             "fields.jsonl": json.dumps({"question": "What?"}) + "\n"}
    expects = {"missing.jsonl": "not found", "empty.jsonl": "empty", "notjson.jsonl": "not valid JSON",
               "fields.jsonl": "unrecognized record"}
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        _bad([bundle, "--qa", str(tmp_path / name)], out, expects[name])


def test_bad_bundles_and_out(tiny_bundles: dict[str, Path], heldout: Path, tmp_path: Path):
    tiny, other = str(tiny_bundles["tiny"]), str(tiny_bundles["other"])
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "run"
    _bad([tiny, other, "--qa", str(heldout)], out, "use different embedders")
    _bad([tiny, "--baseline", str(heldout), "--qa", str(heldout)], out, "--baseline")
    _bad([tiny, "--baseline", str(tmp_path / "nothing"), "--qa", str(heldout)], out, "no such bundle")
    _bad([str(tmp_path / "nothing"), "--qa", str(heldout)], out, "no such bundle")
    empty_probes = tmp_path / "probes.txt"
    empty_probes.write_text("# nothing\n")
    _bad([tiny, "--qa", str(heldout), "--probes", str(empty_probes)], out, "no questions")
    as_file = tmp_path / "f" / "eval-out"
    as_file.parent.mkdir()
    as_file.write_text("x")
    proc = run_cli("eval", tiny, "--qa", str(heldout), "--out", str(as_file))
    assert proc.returncode == 2 and "is a file" in proc.stderr and as_file.read_text() == "x"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    proc = run_cli("eval", tiny, "--qa", str(heldout), "--out", str(busy))
    assert proc.returncode == 2 and "holds other files" in proc.stderr and (busy / "keep.txt").read_text() == "mine"


def test_system_names_and_probe_files(tmp_path: Path):
    from slmforge.bench.evaluate import DEFAULT_PROBES, read_probes, unique_names

    assert unique_names([Path("runs/a/bundle"), Path("runs/b/bundle"), Path("x/base.tar"), Path("runs/a/bundle")]) == [
        "bundle", "bundle-2", "base", "bundle-3"]
    assert read_probes(None) == list(DEFAULT_PROBES) and len(DEFAULT_PROBES) == 10
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"question": "Who painted it?"}) + "\n"
                     + json.dumps({"messages": [{"role": "user", "content": "Best pizza?"}]}) + "\n")
    assert read_probes(jsonl) == ["Who painted it?", "Best pizza?"]
    jsonl.write_text(json.dumps({"answer": "x"}) + "\n")
    with pytest.raises(Exception, match="p.jsonl:1"):
        read_probes(jsonl)

