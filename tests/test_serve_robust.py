"""`slmforge serve` under hostile and unlucky clients: every error a 4xx in OpenAI's shape, slow and
vanishing clients cut cleanly (408/499, no tracebacks, no 500 rows), SIGTERM ends streams with [DONE]."""

from __future__ import annotations

import json
import signal
import sqlite3

import httpx
import pytest
from slmforge.bench.dev.load_test import half_open_connections
from slmforge.runtime.serve.api_error import ApiError
from slmforge.runtime.serve.request_body import parse_json_object

from tests.serve_helpers import serving, tiny_bundle_path

HI = '{"messages": [{"role": "user", "content": "hi"}]'
HOSTILE = {
    "5000-digit max_tokens": HI + ', "max_tokens": ' + "9" * 5000 + "}",
    "100000 deep": HI + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "900 deep content": '{"messages": [{"role": "user", "content": [' + '{"a": ' * 900 + "1" + "}" * 900 + "]}]}",
    "NaN": HI + ', "temperature": NaN}',
    "1e400": HI + ', "max_tokens": 1e400}',
    "lone surrogate": '{"messages": [{"role": "user", "content": "\\ud800 hi"}]}',
    "huge seed": HI + ', "seed": ' + "9" * 30 + "}",
    "string max_tokens": HI + ', "max_tokens": "many"}',
    "fractional max_tokens": HI + ', "max_tokens": 2.5}',
    "messages not a list": '{"messages": "hi"}',
    "content a number": '{"messages": [{"role": "user", "content": 5}]}',
    "300 messages": json.dumps({"messages": [{"role": "user", "content": "hi"}] * 300}),
    "not an object": "[1, 2]",
    "not JSON": '{"messages": [',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bodies_parse_to_400_or_a_model_error(name):
    """The parser refuses what it must (deep, long ints, NaN, surrogates) and lets pydantic see the rest."""
    try:
        parse_json_object(HOSTILE[name].encode())
    except ApiError as exc:
        assert exc.status == 400 and exc.message
    else:  # well-formed JSON of the wrong shape: the request model answers (checked against the server below)
        assert name in {"string max_tokens", "fractional max_tokens", "messages not a list", "content a number",
                        "300 messages"}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return tiny_bundle_path(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    db = tmp_path_factory.mktemp("telemetry") / "t.db"
    with serving(tiny_bundle, "--telemetry", str(db), "--body-timeout", "2") as srv:
        srv.db = db
        yield srv


def _statuses(db) -> dict[int, int]:
    rows = sqlite3.connect(db).execute('SELECT "http.response.status_code", count(*) FROM requests GROUP BY 1')
    return dict(rows.fetchall())


@pytest.mark.integration
def test_every_bad_request_is_4xx_in_openai_shape(server):
    url = server.url + "/v1/chat/completions"
    for name, body in HOSTILE.items():
        r = httpx.post(url, content=body.encode(), headers={"Content-Type": "application/json"}, timeout=120)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == r.status_code and error["message"] and error["type"], name
    for method, path in (("POST", "/v1/models"), ("GET", "/no/such/route")):
        r = httpx.request(method, server.url + path)
        assert r.status_code in (404, 405) and r.json()["error"]["code"] == r.status_code
    embed = httpx.post(server.url + "/v1/embeddings", content=b'{"input": "\\udc00"}')
    assert embed.status_code == 400 and "surrogate" in embed.json()["error"]["message"]
    assert 500 not in _statuses(server.db)
    assert "Traceback" not in server.log.read_text()


@pytest.mark.integration
def test_half_sent_bodies_get_408_and_hang_ups_499_without_tracebacks(server):
    result = half_open_connections(server.url, 40, wait_s=60)
    assert result["connect_failures"] == 0 and result["silent"] == 20
    assert result["silent_closed_by_server"] == 20, result
    assert result["silent_answers"] == {"HTTP/1.1 408 Request Timeout": 20}, result
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    # a client that leaves mid-stream is a 499 too
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": "Explain files."}], "max_tokens": 200,
                            "stream": True}) as resp:
        next(line for line in resp.iter_lines() if line.startswith("data: "))
    statuses = _statuses(server.db)
    assert statuses.get(408) >= 20 and statuses.get(499) >= 20 and 500 not in statuses, statuses
    log = server.log.read_text()
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]


@pytest.mark.integration
def test_sigterm_mid_stream_ends_with_final_chunk_and_done(tiny_bundle, tmp_path):
    with serving(tiny_bundle, "--telemetry", str(tmp_path / "t.db"), "--no-cache") as srv:
        lines = []
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "Explain Python classes in detail."}],
                                "max_tokens": 1000, "temperature": 0.8, "seed": 1, "stream": True}) as resp:
            for line in resp.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 3:  # the role chunk and two tokens: generating
                    srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=60) == 0
        log = srv.log.read_text()
    assert lines[-1] == "data: [DONE]", lines[-3:]
    final = json.loads(lines[-2].removeprefix("data: "))
    assert final["choices"][0]["finish_reason"] == "length" and final["slmforge"]["stopped"] == "server_shutdown"
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
