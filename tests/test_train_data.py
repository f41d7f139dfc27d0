"""Training data formats (JSONL reading, validation, conversions) and held-out perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from slmforge.trainer.data.datasets import load_records, to_kto, to_messages
from slmforge.trainer.train.perplexity import perplexity

from slmforge.errors import UserError
from slmforge.heldout import load_heldout_texts, text_dataset_files

PAIR = {"prompt": "How do I copy a file?", "chosen": "Use shutil.copy().", "rejected": "You cannot."}
KTO = {"prompt": "How do I copy a file?", "completion": "Use shutil.copy().", "label": True}
CHAT = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
ALPACA = {"instruction": "Name a list method.", "input": "mutating", "output": "append"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method,row,fmt", [
    ("pretrain", {"text": "some text", "source": "a.rst", "doc_id": "1"}, "text"),
    ("sft", CHAT, "messages"),
    ("sft", ALPACA, "alpaca"),
    ("dpo", PAIR, "preference"),
    ("ipo", PAIR, "preference"),
    ("orpo", PAIR, "preference"),
    ("kto", KTO, "kto"),
    ("kto", PAIR, "preference"),
])
def test_each_format_loads_for_its_methods(tmp_path, method, row, fmt):
    got_fmt, records = load_records(write_jsonl(tmp_path / "d.jsonl", [row, row]), method)
    assert got_fmt == fmt and records == [row, row]


def test_alpaca_becomes_a_user_and_assistant_turn():
    assert to_messages("alpaca", ALPACA) == [
        {"role": "user", "content": "Name a list method.\n\nmutating"},
        {"role": "assistant", "content": "append"},
    ]


def test_pairs_split_into_desirable_and_undesirable_kto_examples():
    assert to_kto("preference", [PAIR]) == [
        {"prompt": PAIR["prompt"], "completion": "Use shutil.copy().", "label": True},
        {"prompt": PAIR["prompt"], "completion": "You cannot.", "label": False},
    ]


def test_malformed_line_is_reported_with_its_number(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [PAIR, PAIR, '{"prompt": "x", "chosen": '])
    with pytest.raises(UserError, match=r"d\.jsonl:3: not valid JSON"):
        load_records(path, "dpo")


def test_kto_data_given_to_dpo_is_a_clear_mismatch(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [KTO])
    with pytest.raises(UserError) as err:
        load_records(path, "dpo")
    msg = str(err.value)
    assert "kto.jsonl:1" in msg and "KTO data" in msg and "'dpo' needs preference pairs" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("method,rows,match", [
    ("dpo", [], "no records"),
    ("kto", [PAIR, KTO], "mixed with"),
    ("dpo", [{"prompt": "q", "chosen": "", "rejected": "r"}], r":1: field \"chosen\" must be a non-empty string"),
    ("kto", [{**KTO, "label": "yes"}], r":1: field \"label\" must be true"),
    ("sft", [{"messages": [{"role": "user", "content": "q"}]}], "last message must be the assistant"),
    ("sft", [{"messages": [{"role": "robot", "content": "q"}]}], r"messages\[0\]"),
    ("sft", [{"foo": 1}], "unrecognized record"),
    ("dpo", ["[1, 2]"], "expected a JSON object"),
])
def test_bad_records_fail_with_one_line(tmp_path, method, rows, match):
    with pytest.raises(UserError, match=match) as err:
        load_records(write_jsonl(tmp_path / "d.jsonl", rows), method)
    assert "\n" not in str(err.value)


def test_dataset_dir_and_missing_inputs(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    write_jsonl(tmp_path / "heldout.jsonl", [{"text": "b"}])
    assert text_dataset_files(tmp_path) == (tmp_path / "train.jsonl", tmp_path / "heldout.jsonl")
    assert text_dataset_files(tmp_path / "heldout.jsonl") == (tmp_path / "heldout.jsonl", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train.jsonl"):
        text_dataset_files(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        text_dataset_files(tmp_path / "nope")


def test_load_texts_reads_a_dataset_dir_or_file(tmp_path):
    write_jsonl(tmp_path / "heldout.jsonl", [{"text": "alpha"}, {"text": "  "}, {"text": "beta"}])
    assert load_heldout_texts(tmp_path) == ["alpha", "beta"]
    assert load_heldout_texts(tmp_path / "heldout.jsonl") == ["alpha", "beta"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no heldout.jsonl"):
        load_heldout_texts(tmp_path / "empty")
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:1: no \"text\""):
        load_heldout_texts(tmp_path / "bad.jsonl")


def test_perplexity_matches_the_models_own_loss(tiny_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    texts = ["How do I copy a file? Use shutil.copy().", "Lists are mutable sequences."]
    ids = []
    for t in texts:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        expected = math.exp(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item())
    assert perplexity(model, tok, texts, seq_len=len(ids)) == pytest.approx(expected, rel=1e-4)
    # windows are non-overlapping: shorter windows lose context, so perplexity cannot improve much
    windowed = perplexity(model, tok, texts, seq_len=8)
    assert windowed > 1 and math.isfinite(windowed)
    assert perplexity(model, tok, texts, seq_len=8, max_tokens=16) != windowed
    with pytest.raises(UserError, match="fewer than 2 tokens"):
        perplexity(model, tok, [""], seq_len=8, max_tokens=1)
