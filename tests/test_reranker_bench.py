"""The reranker bench's training rows: every question gets its gold chunk (1) and two chunks that are not (0)."""

import json
from pathlib import Path

import pytest
from slmforge.bench.dev.reranker import training_rows


def test_each_question_gets_its_gold_chunk_and_two_negatives(tmp_path: Path):
    triplets = [{"anchor": f"q{i}", "positive": f"gold {i}", "negative": f"near miss {i}"} for i in range(5)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(t) + "\n" for t in triplets))
    rows = training_rows(pairs)
    assert len(rows["question"]) == len(rows["chunk"]) == len(rows["label"]) == 15
    for i in range(5):
        mine = [(c, y) for q, c, y in zip(rows["question"], rows["chunk"], rows["label"]) if q == f"q{i}"]
        assert (f"gold {i}", 1.0) in mine and (f"near miss {i}", 0.0) in mine
        assert [y for _, y in mine].count(1.0) == 1  # the random negative is another question's gold, never its own
        assert all(c != f"gold {i}" for c, y in mine if y == 0.0)


def test_pairs_without_hard_negatives_are_refused(tmp_path: Path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"anchor": "q", "positive": "p"}) + "\n")
    with pytest.raises(SystemExit, match="hard-negatives"):
        training_rows(pairs)
