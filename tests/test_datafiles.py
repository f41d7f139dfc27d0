"""The shared data pieces: held-out text, formats, the example locator and perplexity, each with one home."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from slmforge import assets, heldout
from slmforge.errors import UserError
from slmforge.formats import alpaca_prompt, detect_format
from slmforge.perplexity import perplexity, target_nll, token_stream, token_windows, window_nll


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# -- held-out text ------------------------------------------------------------------------------------------

def test_heldout_reads_a_dataset_dir_jsonl_text_file_or_folder(tmp_path):
    write_jsonl(tmp_path / "heldout.jsonl", [{"text": "alpha"}, {"text": " "}, {"text": "beta"}])
    assert heldout.load_heldout_texts(tmp_path) == ["alpha", "beta"]
    assert heldout.load_heldout_texts(tmp_path / "heldout.jsonl") == ["alpha", "beta"]
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "b.rst").write_text("second")
    (docs / "sub" / "a.md").write_text("first")
    (docs / "skip.py").write_text("not text")
    assert heldout.load_heldout_texts(docs) == ["second", "first"]  # sorted paths: b.rst < sub/a.md
    assert heldout.load_heldout_texts(docs / "b.rst") == ["second"]


def test_heldout_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"prompt": "x"}])
    write_jsonl(tmp_path / "blank.jsonl", [{"text": "  "}])
    for path, match in ((tmp_path / "empty", "no heldout.jsonl"), (tmp_path / "nope", "not found"),
                        (tmp_path / "bad.jsonl", r"bad\.jsonl:2: no \"text\""),
                        (tmp_path / "blank.jsonl", "no non-empty")):
        with pytest.raises(UserError, match=match) as err:
            heldout.load_heldout_texts(path)
        assert "\n" not in str(err.value)


def test_every_stage_reads_heldout_text_through_one_function():
    readers = {importlib.import_module(m).load_heldout_texts
               for m in ("slmforge.export.run", "slmforge.bench.run_bundle", "slmforge.trainer.train.sft")}
    assert readers == {heldout.load_heldout_texts}
    for module in ("slmforge.bench.quality", "slmforge.export.quality", "slmforge.trainer.train.perplexity"):
        own = [name for name in ("load_heldout", "load_heldout_texts", "load_texts", "_jsonl")
               if hasattr(importlib.import_module(module), name)]
        assert own == [], module


def test_split_uses_the_heldout_file_else_a_seeded_fraction(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"doc {i}"} for i in range(20)])
    alone = heldout.split_heldout(tmp_path / "train.jsonl", seed=3)
    assert alone.files == [tmp_path / "train.jsonl"] and len(alone.heldout) == 2 and len(alone.train) == 18
    assert alone == heldout.split_heldout(tmp_path / "train.jsonl", seed=3)
    assert set(alone.train) | set(alone.heldout) == {f"doc {i}" for i in range(20)}
    assert alone.heldout_source == "10% of lines (seed 3)"
    write_jsonl(tmp_path / "heldout.jsonl", [{"text": "held"}])
    files, train, held, source = heldout.split_heldout(tmp_path, seed=3)
    assert (len(files), len(train), held, source) == (2, 20, ["held"], "heldout.jsonl")
    assert heldout.train_and_heldout(tmp_path) == (train, ["held"])
    assert heldout.train_and_heldout(tmp_path / "train.jsonl") == (train, train)


# -- formats ------------------------------------------------------------------------------------------------

def test_sft_and_qa_read_alpaca_the_same_way():
    from slmforge.qa_records import record_from_json

    row = {"instruction": " Name a list method. ", "input": "mutating", "output": "append"}
    assert detect_format(row) == "alpaca"
    assert record_from_json("x", row).question == alpaca_prompt(row) == "Name a list method.\n\nmutating"
    datasets = pytest.importorskip("slmforge.trainer.data.datasets")
    assert datasets.to_messages("alpaca", row)[0]["content"] == alpaca_prompt(row)


CHAT_SAMPLES = {
    "messages": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Q?"},
                              {"role": "assistant", "content": "A."}]},
    "alpaca": {"instruction": "Q?", "output": "A."},
    "qa": {"question": "Q?", "answer": "A."},
}


@pytest.mark.parametrize("fmt", sorted(CHAT_SAMPLES))
def test_every_chat_format_row_is_read_by_sft_and_by_qa_alike(tmp_path, fmt):
    """A chat format is one row of FORMATS: SFT trains on it and QA files read it, with nothing else to edit."""
    from slmforge.formats import CHAT_FORMATS
    from slmforge.qa_records import record_from_json

    assert set(CHAT_SAMPLES) == set(CHAT_FORMATS)
    row = CHAT_SAMPLES[fmt]
    rec = record_from_json("x", row)
    assert (rec.question, rec.answer) == ("Q?", "A.")
    datasets = pytest.importorskip("slmforge.trainer.data.datasets")
    got_fmt, records = datasets.load_records(write_jsonl(tmp_path / "d.jsonl", [row, row]), "sft")
    assert got_fmt == fmt
    assert datasets.to_messages(fmt, records[0])[-2:] == [{"role": "user", "content": "Q?"},
                                                          {"role": "assistant", "content": "A."}]


@pytest.mark.parametrize("row,match", [
    ({"question": "Q?", "answer": "  "}, "field \"answer\" must be a non-empty string"),
    ({"instruction": "Q?", "output": "A.", "input": 3}, "alpaca fields"),
    ({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": " "}]}, "empty question or answer"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "A."}]}, "user turn"),
    ({"question": "Q?"}, "unrecognized record"),
])
def test_qa_records_refuse_unusable_rows_in_one_line(row, match):
    from slmforge.qa_records import record_from_json

    with pytest.raises(UserError, match=match) as err:
        record_from_json("f.jsonl:3", row)
    assert str(err.value).startswith("f.jsonl:3: ") and "\n" not in str(err.value)


# -- the shipped example ------------------------------------------------------------------------------------

def test_example_locator_finds_the_checkout_or_the_env_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SLMFORGE_EXAMPLES", raising=False)
    assert (assets.example_docs() / "faq").is_dir()
    assert assets.example_recipe(quick=True).name == "recipe-quick.yaml"
    monkeypatch.setenv("SLMFORGE_EXAMPLES", str(tmp_path))
    assert assets.example_docs() == tmp_path / "python-docs" / "docs"
    with pytest.raises(UserError, match="SLMFORGE_EXAMPLES"):
        assets.example_recipe()


# -- perplexity ---------------------------------------------------------------------------------------------

def test_stream_ends_each_text_with_eos_and_windows_do_not_overlap():
    def tokenize(text: str) -> list[int]:
        return [ord(c) for c in text]

    assert token_stream(tokenize, ["ab", "c"], eos=0) == [97, 98, 0, 99, 0]
    assert token_stream(tokenize, ["ab", "c"], eos=None) == [97, 98, 99]
    assert token_stream(tokenize, ["abc", "def"], eos=0, max_tokens=4) == [97, 98, 99, 0]
    assert token_windows([1, 2, 3, 4, 5, 6, 7], 3) == [[1, 2, 3], [4, 5, 6]]  # a 1-token tail predicts nothing
    with pytest.raises(UserError, match="fewer than 2 tokens"):
        token_windows([1], 8)


def test_perplexity_on_a_hand_made_case():
    # uniform over 4 tokens: every prediction has probability 1/4, so perplexity is 4
    assert perplexity(target_nll(np.zeros((3, 4)), [0, 1, 2])) == pytest.approx(4.0)
    # probabilities 1/2 and 1/8 for the two targets: exp(mean(ln 2, ln 8)) = sqrt(16) = 4
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.125, 0.125, 0.75]]))
    assert target_nll(logits, [0, 1]) == pytest.approx([math.log(2), math.log(8)])
    assert perplexity(target_nll(logits, [0, 1])) == pytest.approx(4.0)
    # per window: the logits row i predicts window[i + 1]; the last row predicts nothing
    window = [9, 0, 1]
    with_last = np.vstack([logits, np.zeros((1, 3))])
    assert perplexity([window_nll(with_last, window), np.array([math.log(4)])]) == pytest.approx(4.0)
    with pytest.raises(UserError, match="no predicted tokens"):
        perplexity([])
