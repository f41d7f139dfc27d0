"""Telemetry store, drift statistics and the answer cache: fast, no model needed."""

from __future__ import annotations

import socket
import sqlite3
import time

import numpy as np
import pytest
from slmforge.runtime.answer.cache import AnswerCache, normalize_question
from slmforge.runtime.telemetry.drift import IndexReference, answer_support, drift_report, split_sentences
from slmforge.runtime.telemetry.store import TelemetryStore, measure_resources, telemetry_path


def test_store_uses_wal_and_otel_names_and_drops_text_by_default(tmp_path):
    db = tmp_path / "b.telemetry.db"
    store = TelemetryStore(db)
    store.record({"gen_ai.response.id": "r1", "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 5,
                  "gen_ai.response.finish_reasons": ["stop"], "gen_ai.input.messages": [{"role": "user", "content": "hi"}],
                  "slmforge.query.embedding": np.ones(4, dtype=np.float32)})
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
    assert "gen_ai.usage.input_tokens" in cols and "gen_ai.server.time_to_first_token" in cols
    row = conn.execute('SELECT "gen_ai.usage.input_tokens", "gen_ai.response.finish_reasons", '
                       '"gen_ai.input.messages" FROM requests').fetchone()
    assert row == (12, '["stop"]', None), "text must not be stored without --log-text"
    rows = TelemetryStore(db, readonly=True).requests()
    assert rows[0]["slmforge.query.embedding"].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_log_text_keeps_text(tmp_path):
    store = TelemetryStore(tmp_path / "t.db", log_text=True)
    store.record({"gen_ai.response.id": "r1", "gen_ai.output.messages": [{"role": "assistant", "content": "yo"}]})
    assert "yo" in store.request_by_id("r1")["gen_ai.output.messages"]


def test_unknown_attribute_is_refused(tmp_path):
    store = TelemetryStore(tmp_path / "t.db")
    with pytest.raises(ValueError, match="gen_ai.usage.tokens"):
        store.record({"gen_ai.usage.tokens": 3})


def test_retention_by_rows_and_days(tmp_path):
    store = TelemetryStore(tmp_path / "t.db", max_rows=5, max_days=1.0)
    for i in range(12):
        store.record({"gen_ai.response.id": f"r{i}"})
    store.prune()
    ids = [r["gen_ai.response.id"] for r in store.requests()]
    assert ids == [f"r{i}" for i in range(7, 12)]
    store.record({"time": time.time() - 3 * 86400, "gen_ai.response.id": "old"})
    store.prune()
    assert "old" not in [r["gen_ai.response.id"] for r in store.requests()]


def test_readonly_missing_db_is_user_error(tmp_path):
    from slmforge.errors import UserError

    with pytest.raises(UserError, match="no telemetry yet"):
        TelemetryStore(tmp_path / "none.db", readonly=True)


def test_telemetry_lives_next_to_the_bundle(tmp_path):
    bundle = tmp_path / "mybundle"
    bundle.mkdir()
    path = telemetry_path(bundle)
    assert path.parent == tmp_path and not path.is_relative_to(bundle)
    assert telemetry_path(tmp_path / "b.tar").name == "b.tar.telemetry.db"


def test_measure_resources_reports_process_memory_and_cpu():
    with measure_resources() as sample:
        sum(i * i for i in range(200_000))
    assert sample.attrs["process.memory.usage"] > 1_000_000
    assert sample.attrs["slmforge.process.memory.peak"] >= sample.attrs["process.memory.usage"] * 0.5
    assert 0.0 <= sample.attrs["process.cpu.utilization"] <= 1.5


# -- drift ------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def domain():
    """Chunks around a few topic directions in 64 dims; queries near them or off in other dimensions."""
    rng = np.random.default_rng(0)
    topics = _unit(rng.normal(size=(5, 64)) * np.r_[np.ones(32), np.zeros(32)])
    chunks = _unit(np.repeat(topics, 40, axis=0) + 0.08 * rng.normal(size=(200, 64)))
    probes = _unit(rng.normal(size=(20, 64)) * np.r_[np.zeros(32), np.ones(32)])
    reference = IndexReference.from_vectors(chunks, probes)
    return rng, topics, chunks, reference


def _row(rng, chunks, query):
    top1 = float((chunks @ query).max())
    return {"slmforge.retrieval.top1_score": top1, "slmforge.query.embedding": query,
            "slmforge.answer.support": 0.7}


def test_drift_flags_the_out_of_domain_half_only(domain):
    rng, topics, chunks, reference = domain
    inside = [_unit(topics[i % 5] + 0.05 * rng.normal(size=64)) for i in range(40)]
    offside = [_unit(rng.normal(size=64) * np.r_[np.zeros(32), np.ones(32)]) for _ in range(40)]
    rows = [_row(rng, chunks, q) for q in inside + offside]
    report = drift_report(rows, reference, window=10)
    assert report["drifted_windows"] == [4, 5, 6, 7]
    assert report["status"] == "re-index" and "index add" in report["recommendation"]
    assert report["windows"][0]["ood_rate"] == 0.0 and report["windows"][-1]["ood_rate"] == 1.0
    assert report["windows"][0]["centroid_distance"] < report["windows"][-1]["centroid_distance"]
    fine = drift_report(rows[:40], reference, window=10)
    assert fine["status"] == "fine" and fine["drifted_windows"] == []


def test_low_support_recommends_retraining(domain):
    rng, topics, chunks, reference = domain
    rows = [dict(_row(rng, chunks, _unit(topics[0] + 0.1 * rng.normal(size=64))), **{"slmforge.answer.support": 0.1})
            for _ in range(10)]
    assert drift_report(rows, reference, window=10)["status"] == "retrain"


def test_answer_support_is_high_for_copied_text_and_low_for_unrelated():
    vocab: dict[str, int] = {}

    def bag_of_words(texts):  # a deterministic stand-in embedder: normalized word counts
        rows = []
        for t in texts:
            v = np.zeros(256)
            for w in t.lower().split():
                v[vocab.setdefault(w.strip(".,"), len(vocab)) % 256] += 1
            rows.append(v / max(np.linalg.norm(v), 1e-9))
        return np.array(rows)

    context = ["shutil.copy copies the file src to the file or directory dst."]
    assert answer_support("It copies the file src to the file or directory dst [1].", context,
                          bag_of_words) > 0.6
    assert answer_support("Bananas are yellow and grow in warm places.", context, bag_of_words) < 0.2
    assert answer_support("", context, bag_of_words) is None
    assert split_sentences("First one here. Second [2] one here!\nok") == ["First one here.", "Second  one here!"]


# -- cache ------------------------------------------------------------------------------------------


def test_cache_exact_semantic_and_invalidation():
    cache = AnswerCache(similarity=0.9)
    a = _unit(np.array([1.0, 0.0, 0.0]))
    near = _unit(np.array([1.0, 0.2, 0.0]))
    far = _unit(np.array([0.0, 1.0, 0.0]))
    cache.put("How do I copy a file?", "v1", {"text": "use shutil"}, a)
    hit = cache.get("  how do I COPY a file ", "v1", None)
    assert hit is not None and hit.kind == "exact" and hit.value["text"] == "use shutil"
    hit = cache.get("How can a file be copied?", "v1", near)
    assert hit is not None and hit.kind == "semantic" and hit.similarity > 0.9
    assert cache.get("What is a tuple?", "v1", far) is None
    assert cache.get("How do I copy a file?", "v2", a) is None, "a new index version must empty the cache"
    assert len(cache) == 0
    assert normalize_question("«How do I copy a file?»") == "how do i copy a file"


def test_cache_is_bounded():
    cache = AnswerCache(capacity=3)
    for i in range(5):
        cache.put(f"question {i}", "v", i)
    assert len(cache) == 3 and cache.get("question 0", "v") is None and cache.get("question 4", "v").value == 4


# -- escalation -------------------------------------------------------------------------------------


def test_escalation_policy_and_offline_endpoint():
    from slmforge.runtime.answer.escalate import (
        EscalationError,
        EscalationPolicy,
        Escalator,
        context_messages,
    )

    policy = EscalationPolicy(min_top1=0.35, min_support=0.3)
    assert policy.reason(0.2, 0.1) and "low confidence" in policy.reason(0.2, 0.1)
    assert policy.reason(0.6, 0.1) is None and policy.reason(0.2, 0.5) is None
    assert "context window" in policy.reason(None, None, context_overflow=True)
    messages = context_messages([{"role": "system", "content": "x"}, {"role": "user", "content": "q?"}],
                                [("faq.rst — Copy", "Use shutil.copy().")])
    assert messages[0]["role"] == "system" and "[1] faq.rst — Copy" in messages[0]["content"]
    assert messages[1:] == [{"role": "user", "content": "q?"}]
    with socket.socket() as s:  # a port nobody listens on: the device is offline for this endpoint
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    offline = Escalator(f"http://127.0.0.1:{port}/v1", timeout_s=5)
    assert offline.endpoint.endswith("/v1/chat/completions")
    with pytest.raises(EscalationError, match="unreachable"):
        offline.complete([{"role": "user", "content": "q?"}], max_tokens=8)
