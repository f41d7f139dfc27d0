"""Feedback: ratings stored with the exchange, exported as KTO/DPO JSONL that the trainer accepts."""

from __future__ import annotations

import json

import pytest
from slmforge.runtime.telemetry.feedback import export_feedback, parse_rating, record_feedback
from slmforge.runtime.telemetry.store import TelemetryStore, telemetry_path

from slmforge.errors import UserError
from tests.conftest import run_cli

EXCHANGES = [
    ("How do I copy a file?", "Use shutil.copy(src, dst) [1].", True, None),
    ("How do I copy a file?", "Files cannot be copied in Python.", False, None),
    ("What is a tuple?", "A tuple is a mutable list.", False, "A tuple is an immutable sequence [1]."),
    ("How do I read a CSV file?", "Use csv.reader on an open file [1].", True, None),
    ("How do I sort a list?", "Lists are sorted by the sort() method or sorted() [1].", True, None),
    ("How do I sort a list?", "Use the shuffle function.", False, None),
]


def _store(tmp_path) -> TelemetryStore:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    store = TelemetryStore(telemetry_path(bundle))
    for i, (q, a, good, correction) in enumerate(EXCHANGES):
        record_feedback(store, f"chatcmpl-{i}", good, q, a, correction=correction)
    return store


def test_parse_rating():
    assert parse_rating("good") is True and parse_rating("down") is False and parse_rating(-1) is False
    assert parse_rating(True) is True and parse_rating("1") is True
    with pytest.raises(UserError, match="thumbs up or down"):
        parse_rating("meh")


def test_kto_export_has_every_rating_and_each_correction(tmp_path):
    store = _store(tmp_path)
    out = tmp_path / "kto.jsonl"
    summary = export_feedback(store, "kto", out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["ratings"] == 6 and summary["good"] == 3 and summary["records"] == 7 == len(records)
    assert all(set(r) == {"prompt", "completion", "label"} and isinstance(r["label"], bool) for r in records)
    assert {"prompt": "What is a tuple?", "completion": "A tuple is an immutable sequence [1].", "label": True} in records


def test_dpo_export_pairs_corrections_and_liked_over_disliked(tmp_path):
    store = _store(tmp_path)
    out = tmp_path / "dpo.jsonl"
    export_feedback(store, "dpo", out)
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 3
    assert {"prompt": "How do I copy a file?", "chosen": "Use shutil.copy(src, dst) [1].",
            "rejected": "Files cannot be copied in Python."} in pairs
    assert {"prompt": "What is a tuple?", "chosen": "A tuple is an immutable sequence [1].",
            "rejected": "A tuple is a mutable list."} in pairs


def test_exports_are_accepted_by_the_trainer_loader(tmp_path):
    datasets = pytest.importorskip("slmforge.trainer.data.datasets")
    store = _store(tmp_path)
    export_feedback(store, "kto", tmp_path / "kto.jsonl")
    export_feedback(store, "dpo", tmp_path / "dpo.jsonl")
    fmt, records = datasets.load_records(tmp_path / "kto.jsonl", "kto")
    assert fmt == "kto" and len(records) == 7
    fmt, records = datasets.load_records(tmp_path / "dpo.jsonl", "dpo")
    assert fmt == "preference" and len(records) == 3


def test_cli_export_and_clear_errors(tmp_path):
    _store(tmp_path).close()
    out = tmp_path / "out" / "kto.jsonl"
    proc = run_cli("feedback", "export", str(tmp_path / "bundle"), "--format", "kto", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["records"] == 7 and len(out.read_text().splitlines()) == 7

    empty = tmp_path / "empty"
    empty.mkdir()
    TelemetryStore(telemetry_path(empty)).close()
    proc = run_cli("feedback", "export", str(empty), "--format", "dpo", "--out", str(tmp_path / "x.jsonl"))
    assert proc.returncode == 2 and "no feedback recorded yet" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.jsonl").exists()

    proc = run_cli("feedback", "export", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "y.jsonl"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_dpo_without_pairs_says_to_use_kto(tmp_path):
    store = TelemetryStore(tmp_path / "t.db")
    record_feedback(store, "r1", True, "q?", "a.")
    with pytest.raises(UserError, match="--format kto"):
        export_feedback(store, "dpo", tmp_path / "d.jsonl")


@pytest.mark.integration
def test_kto_export_trains_with_align(tmp_path, tiny_checkpoint):
    """The exported file is real training data: `slmforge train align --method kto` runs on it."""
    pytest.importorskip("slmforge.trainer.train.align", reason="train align (trainer engineer) not landed yet")
    store = _store(tmp_path)
    data = tmp_path / "kto.jsonl"
    export_feedback(store, "kto", data)
    out = tmp_path / "aligned"
    proc = run_cli("train", "align", "--method", "kto", "--model", str(tiny_checkpoint), "--data", str(data),
                   "--out", str(out), "--max-steps", "2", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads(proc.stdout)["metrics"]
    assert metrics["method"] == "kto" and metrics["steps"] >= 1
    assert (out / "slmforge.json").is_file()


def test_chat_good_and_bad_commands_store_ratings(tmp_path):
    from slmforge.runtime.telemetry.feedback import rate_from_chat

    bundle = tmp_path / "b"
    bundle.mkdir()
    assert "nothing to rate" in rate_from_chat(bundle, None, "/good")
    assert "thumbs up" in rate_from_chat(bundle, ("How do I sort a list?", "Use sorted()."), "/good")
    message = rate_from_chat(bundle, ("What is a tuple?", "A mutable list."), "/bad An immutable sequence.")
    assert "correction" in message
    rows = TelemetryStore(telemetry_path(bundle), readonly=True).feedback()
    assert [(r["label"], r["correction"]) for r in rows] == [(1, None), (0, "An immutable sequence.")]
