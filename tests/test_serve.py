"""`slmforge serve` on loopback with the real SmolLM2-135M bundle, driven by the real `openai` client."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading

import httpx
import pytest

from tests.conftest import run_cli
from tests.serve_helpers import IN_DOMAIN, OUT_OF_DOMAIN, real_bundle_path, serving

pytestmark = pytest.mark.integration
KEY = "test-key-123"


@pytest.fixture(scope="session")
def real_bundle(tmp_path_factory):
    return real_bundle_path(tmp_path_factory)


@pytest.fixture(scope="module")
def server(real_bundle, tmp_path_factory):
    """One server for the API tests: API key on, queue of 1 so overload is easy to provoke."""
    db = tmp_path_factory.mktemp("telemetry") / "t.db"
    with serving(real_bundle, "--api-key", KEY, "--queue", "1", "--parallel", "1", "--telemetry", str(db),
                 "--max-body-bytes", "65536") as srv:
        yield srv


def test_openai_client_chat_stream_embeddings_models(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=1800)
    ids = [m.id for m in client.models.list().data]
    assert server.model in ids and "all-MiniLM-L6-v2" in ids

    question = "How do I copy a file together with its metadata?"
    reply = client.chat.completions.create(model=server.model, max_tokens=24, extra_body={"k": 2},
                                           messages=[{"role": "user", "content": question}])
    text = reply.choices[0].message.content
    assert text.strip() and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 50 and 0 < reply.usage.completion_tokens <= 24
    citations = reply.model_extra["citations"]
    assert citations and all({"source", "heading", "chunk_id", "score"} <= set(c) for c in citations)
    assert any("shutil" in c["source"] for c in citations), citations
    assert reply.model_extra["slmforge"]["route"] == "local"

    # the same question again is answered from the cache, streamed, with the same text and sources
    chunks = list(client.chat.completions.create(model=server.model, max_tokens=24, stream=True, extra_body={"k": 2},
                                                 messages=[{"role": "user", "content": question.upper()}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert streamed == text and final.model_extra["slmforge"]["cache"] == "exact"
    assert final.model_extra["citations"] == citations

    # a new question streams token by token, usage in the last chunk
    chunks = list(client.chat.completions.create(
        model=server.model, max_tokens=12, stream=True, stream_options={"include_usage": True}, extra_body={"k": 1},
        messages=[{"role": "user", "content": "What is the difference between a list and a tuple?"}]))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 3 and "".join(deltas).strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= len(deltas)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert final.model_extra["citations"]

    emb = client.embeddings.create(model="all-MiniLM-L6-v2", input=["How do I copy a file?", "Wie spät ist es?"])
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 384
    assert abs(sum(x * x for x in emb.data[0].embedding) - 1.0) < 1e-3 and emb.usage.prompt_tokens > 5

    rated = httpx.post(server.url + "/v1/feedback", json={"request_id": reply.id, "rating": "good"},
                       headers={"Authorization": f"Bearer {KEY}"})
    assert rated.status_code == 200 and rated.json()["stored"] is True


def test_http_errors_are_clear(server):
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    url = server.url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(url, json={"messages": []}).status_code == 401
    assert httpx.get(server.url + "/health").json()["status"] == "ok"

    huge = {"messages": [{"role": "user", "content": "x" * 70_000}]}
    too_big = httpx.post(url, json=huge, headers=auth)
    assert too_big.status_code == 413 and "65536" in too_big.json()["error"]["message"]

    bad = httpx.post(url, content=b'{"messages": [', headers={**auth, "Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]

    over = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999}, headers=auth)
    assert over.status_code == 400 and "max_tokens" in over.json()["error"]["message"]

    wrong_role = httpx.post(url, json={"messages": [{"role": "robot", "content": "hi"}]}, headers=auth)
    assert wrong_role.status_code == 400 and "messages.0.role" in wrong_role.json()["error"]["message"]

    unknown = httpx.post(server.url + "/v1/feedback", json={"request_id": "chatcmpl-nope", "rating": "bad"}, headers=auth)
    assert unknown.status_code == 404


def test_full_queue_answers_429_with_retry_after(server):
    """Queue of 1: with six questions at once, one runs, one waits, the rest are refused at once."""
    results: list[httpx.Response] = []
    questions = [f"How do I use glob to find {w} files?" for w in ("csv", "json", "text", "log", "python", "rst")]

    def ask(q: str) -> None:
        results.append(httpx.post(server.url + "/v1/chat/completions", timeout=900,
                                  headers={"Authorization": f"Bearer {KEY}"},
                                  json={"messages": [{"role": "user", "content": q}], "max_tokens": 24}))

    threads = [threading.Thread(target=ask, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1, codes
    refused = [r for r in results if r.status_code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert httpx.get(server.url + "/health").json()["queue"]["inflight"] == 0


def test_killed_mid_stream_keeps_committed_rows(real_bundle, tmp_path):
    db = tmp_path / "t.db"
    with serving(real_bundle, "--telemetry", str(db), "--no-cache") as srv:
        done = httpx.post(srv.url + "/v1/chat/completions", timeout=900,
                          json={"messages": [{"role": "user", "content": "How do I read a CSV file?"}],
                                "max_tokens": 8}).json()
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=900,
                          json={"messages": [{"role": "user", "content": "Explain Python classes in detail."}],
                                "max_tokens": 200, "stream": True}) as resp:
            lines = resp.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "chat.completion.chunk"
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(timeout=30)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute('SELECT "gen_ai.response.id", "http.response.status_code", "gen_ai.usage.output_tokens" '
                        "FROM requests").fetchall()
    assert (done["id"], 200, done["usage"]["completion_tokens"]) in rows


def test_drift_session_is_flagged_and_reported(real_bundle, tmp_path):
    """In-domain then off-topic questions: the report flags the second half only; SIGTERM exits cleanly."""
    db = tmp_path / "t.db"
    with serving(real_bundle, "--telemetry", str(db), "--no-cache") as srv:
        for question in IN_DOMAIN[:8] + OUT_OF_DOMAIN[:8]:
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=900,
                           json={"messages": [{"role": "user", "content": question}], "max_tokens": 4, "k": 1})
            assert r.status_code == 200, r.text
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
    plot = tmp_path / "telemetry.png"
    proc = run_cli("telemetry", "report", str(real_bundle), "--telemetry", str(db), "--window", "4", "--json",
                   "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    drift = report["drift"]
    assert report["chat_answers"] == 16 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"] > 0
    assert drift["drifted_windows"] == [2, 3], drift["windows"]
    assert drift["status"] == "re-index"
    assert drift["windows"][0]["ood_rate"] == 0.0 and drift["windows"][-1]["ood_rate"] >= 0.5
    assert plot.stat().st_size > 10_000
    rows = sqlite3.connect(db).execute('SELECT "gen_ai.input.messages" FROM requests').fetchall()
    assert rows and all(r[0] is None for r in rows), "no text without --log-text"


def test_report_flags_drift_on_real_retrieval_scores(real_bundle, tmp_path):
    """The report's drift verdict on real retrieval (real embedder, real index), without generation."""
    import numpy as np
    from slmforge.runtime.bundle.reader import open_bundle
    from slmforge.runtime.index.embedder import Embedder
    from slmforge.runtime.index.store import RagIndex
    from slmforge.runtime.telemetry.store import TelemetryStore

    bundle = open_bundle(real_bundle, verify=False)
    embedder = Embedder(bundle.embedder_dir)
    store = TelemetryStore(tmp_path / "t.db")
    with RagIndex(bundle.rag_db, readonly=True) as index:
        for i, question in enumerate(IN_DOMAIN + OUT_OF_DOMAIN):
            vector = embedder.embed([question])[0]
            scores = [h.vec_score for h in index.search(vector, question, k=4) if h.vec_score is not None]
            store.record({"gen_ai.response.id": f"r{i}", "http.route": "/v1/chat/completions",
                          "http.response.status_code": 200, "gen_ai.operation.name": "chat",
                          "gen_ai.server.request.duration": 1.0, "slmforge.route": "local",
                          "slmforge.retrieval.top1_score": max(scores), "slmforge.query.embedding": vector})
    store.close()
    proc = run_cli("telemetry", "report", str(real_bundle), "--telemetry", str(tmp_path / "t.db"), "--json")
    assert proc.returncode == 0, proc.stderr
    drift = json.loads(proc.stdout)["drift"]
    assert drift["drifted_windows"] == [1], drift["windows"]
    assert drift["status"] == "re-index"
    first, second = drift["windows"]
    assert first["ood_rate"] <= 0.1 and second["ood_rate"] >= 0.9
    assert "topic_shift" in second["flags"] and "topic_shift" not in first["flags"]
    assert np.isfinite(first["centroid_distance"])
