"""`slmforge data pairs`: preference and KTO data from QA, with the model's own answers as rejected."""

from __future__ import annotations

import json

import pytest
from slmforge.trainer.data.datasets import load_records
from slmforge.trainer.data.pairs import mismatched_answers, model_answers, pick, run_pairs

from slmforge.cli import main
from slmforge.errors import UserError

QUESTIONS = [("How do I copy a file?", "Use shutil.copy() or shutil.copyfile()."),
             ("How do I read a file line by line?", "Open it with open() and iterate over the file object."),
             ("What is a tuple?", "An immutable sequence."),
             ("How do I raise an exception?", "Use the raise statement with an exception instance."),
             ("What is a module?", "A file containing Python definitions and statements.")]


@pytest.fixture()
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in QUESTIONS))
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mismatched_pairs_and_kto(tmp_path, qa_file):
    stats = run_pairs(qa_file, tmp_path / "prefs.jsonl", kto_out=tmp_path / "kto.jsonl", rejected="mismatched", seed=1)
    prefs = _lines(tmp_path / "prefs.jsonl")
    assert stats["pairs"] == len(prefs) == 5
    answers = dict(QUESTIONS)
    for p in prefs:
        assert p["chosen"] == answers[p["prompt"]]
        assert p["rejected"] != p["chosen"] and p["rejected"] in answers.values()
    kto = _lines(tmp_path / "kto.jsonl")
    assert [k["label"] for k in kto] == [True, False] * 5
    assert kto[0]["completion"] == prefs[0]["chosen"] and kto[1]["completion"] == prefs[0]["rejected"]
    # the training side reads both files as they are
    assert load_records(tmp_path / "prefs.jsonl", "dpo")[0] == "preference"
    assert load_records(tmp_path / "kto.jsonl", "kto")[0] == "kto"
    assert mismatched_answers(["a", "b", "c"], 7) == mismatched_answers(["a", "b", "c"], 7)


def test_pairs_from_tiny_model(tmp_path, qa_file, tiny_checkpoint, capsys):
    out = tmp_path / "prefs.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["data", "pairs", "--qa", str(qa_file), "--model", str(tiny_checkpoint), "--out", str(out),
              "--kto-out", str(tmp_path / "kto.jsonl"), "--limit", "3", "--max-new-tokens", "4",
              "--batch-size", "2", "--threads", "1", "--json"])
    assert exc.value.code == 0
    stats = json.loads(capsys.readouterr().out)
    prefs = _lines(out)
    assert len(prefs) == 3 and stats["pairs"] == 3 and stats["generated_tokens"] > 0
    assert [p["prompt"] for p in prefs] == [q for q, _ in pick(QUESTIONS, 3, 0)]
    assert all(p["rejected"].strip() and p["rejected"] != p["chosen"] for p in prefs)
    manifest = json.loads((tmp_path / "prefs.slmforge.json").read_text())
    assert manifest["stage"] == "pairs" and {i["role"] for i in manifest["inputs"]} == {"qa", "model"}
    assert manifest["lineage"][-1]["stage"] == "tiny"
    # greedy answers are a function of the model: the same questions give the same answers
    answers, timing = model_answers(tiny_checkpoint, ["What is a tuple?"] * 2, 4, 2, 0, threads=1)
    assert answers[0] == answers[1] and timing["generated_tokens"] > 0


def test_pairs_errors(tmp_path, qa_file):
    with pytest.raises(UserError, match="--out .*: is a folder"):
        run_pairs(qa_file, tmp_path, rejected="mismatched")
    with pytest.raises(UserError, match="--rejected model needs --model"):
        run_pairs(qa_file, tmp_path / "p.jsonl")
    with pytest.raises(UserError, match="not a Hugging Face checkpoint"):
        run_pairs(qa_file, tmp_path / "p.jsonl", model=tmp_path)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(UserError, match="prefs.jsonl:1: this is preference pairs"):
        run_pairs(prefs, tmp_path / "p.jsonl", rejected="mismatched")
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.integration
def test_real_model_rejected_answers(tmp_path, real_base, corpus_dir):
    from slmforge.trainer.data.qa.build import build_qa

    build_qa([corpus_dir / "faq" / "library.rst"], tmp_path / "qa.jsonl", heldout_fraction=0)
    stats = run_pairs(tmp_path / "qa.jsonl", tmp_path / "prefs.jsonl", model=real_base, limit=4,
                      max_new_tokens=32, batch_size=4)
    prefs = _lines(tmp_path / "prefs.jsonl")
    assert len(prefs) == 4 and stats["fallback_to_mismatched"] == 0
    assert all(len(p["rejected"].split()) >= 3 and p["rejected"] != p["chosen"] for p in prefs)
