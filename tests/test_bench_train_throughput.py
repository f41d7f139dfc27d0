"""The training-throughput bench: both sides train on the same examples, and tokens are counted per step."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

WORDS = ["the", "module", "copies", "files", "and", "keeps", "their", "metadata", "when", "asked", "to"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_both_sides_train_the_same_examples_and_the_ratio_is_theirs(tiny_checkpoint, tmp_path):
    from slmforge.bench.dev.train_throughput import cpt_pair, main, sft_pair
    from transformers import AutoTokenizer

    (tmp_path / "ds").mkdir()
    write_jsonl(tmp_path / "ds" / "train.jsonl", [{"text": " ".join(WORDS * (i + 1)), "source": f"{i}.rst",
                                                   "doc_id": str(i)} for i in range(8)])
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"messages": [{"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": " ".join(WORDS[: 2 + (i * 3) % 9])}]} for i in range(12)])
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    (ours, _, rows_per_step), (naive, _, batch) = sft_pair(tok, qa, seq_len=256, batch_size=2, seed=0,
                                                           examples_wanted=10)
    assert len(naive) == 10 and batch == 2 and len(ours) < 5 and rows_per_step == 1  # fewer steps...
    assert sum(len(r["input_ids"]) for r in ours.rows) == sum(len(x["input_ids"]) for x in naive.items)  # ...same tokens
    (blocks, _, _), (chunks, _, _) = cpt_pair(tok, tmp_path / "ds", seq_len=16, batch_size=2, seed=0, documents=8)
    streamed = sum(len(b["input_ids"]) for b in blocks)
    assert max(len(c["input_ids"]) for c in chunks.items) == 16  # long documents are cut, not truncated:
    assert streamed <= sum(len(c["input_ids"]) for c in chunks.items) < streamed + 16  # every token (ours drops a tail)

    out = tmp_path / "tp.json"
    result = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--data", str(tmp_path / "ds"), "--qa", str(qa),
                                       "--examples", "10", "--documents", "8", "--batch-size", "2", "--seq-len", "256",
                                       "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("cpt", "sft"):
        row = report[stage]
        for side in ("ours", "baseline"):
            run = row[side]
            assert run["steps"] >= 2 and run["tokens"] > 0
            assert abs(run["tokens"] / run["seconds"] / run["tokens_per_s"] - 1) < 0.01
            assert run["fill"] == round(run["tokens"] / run["positions"], 4)
        assert row["ratio"] == round(row["ours"]["tokens_per_s"] / row["baseline"]["tokens_per_s"], 2)
        assert row["ours"]["fill"] == 1.0 and row["baseline"]["fill"] < 1.0  # the baseline pads, ours never does
    # SFT: 10 examples in batches of 2 → 5 baseline steps; the packed side needs fewer
    assert report["sft"]["baseline"]["steps"] == 5 and report["sft"]["ours"]["steps"] < 5
