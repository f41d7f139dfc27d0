"""Loopback load test of `slmforge serve`: many clients at once, bounded, stopping by itself.

32 clients × 10 chat requests (defaults; ``--duration S`` keeps each client asking for S
seconds instead) against one server with a bounded queue. Every request gets exactly one
answer (no retries), so the run always ends. It reports p50/p95 latency of answered
requests, the count of each status (200, 429/503 = refused by the queue, 5xx = server
errors), and the ratio of loaded to unloaded latency, the unloaded baseline being measured
first in the same run. ``--half-open N`` also opens N connections during the load that send
the headers and half the body: half of them hang up, half stay silent until the server
answers (408 after its body timeout) and closes. Afterwards /health must answer and the
queue must be empty.

    python -m slmforge.bench.dev.load_test BUNDLE [--clients 32] [--requests 10 | --duration 60] [--half-open 300]
        [--queue 4] [--parallel N] [--out result.json]

``bench/dev/load_parallel.py`` uses these pieces for ``serve --parallel``: 1 against 8 clients, then 32.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

QUESTIONS = [
    "How do I copy a file in Python?", "How do I read a CSV file?", "What is a list comprehension?",
    "How can I find the current working directory?", "How do I handle exceptions?", "What does json.dumps do?",
    "How do I create a temporary file?", "What is the difference between a list and a tuple?",
    "How do I generate a random number?", "How do I iterate over a dictionary?", "How do I define a class?",
    "Why are floating point numbers inaccurate?", "How do I make a virtual environment?", "What is pathlib?",
    "How do I sort a list?", "How do I open a file for writing?", "What is a module?", "What is a deque?",
]


def post_chat(url: str, question: str, max_tokens: int, timeout_s: float) -> tuple[int, float, dict[str, str]]:
    """(status, seconds, headers) of one non-streamed chat request; connection failures are status 0."""
    body = json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            payload = json.loads(resp.read())
            headers = {"route": payload.get("slmforge", {}).get("route", ""),
                       "completion_tokens": payload.get("usage", {}).get("completion_tokens", 0)}
            return resp.status, time.perf_counter() - start, headers
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, time.perf_counter() - start, {"Retry-After": exc.headers.get("Retry-After", "")}
    except (urllib.error.URLError, OSError):
        return 0, time.perf_counter() - start, {}


def half_open_connections(url: str, count: int, wait_s: float = 120) -> dict[str, Any]:
    """Open ``count`` connections that send headers and half a JSON body; even ones hang up, odd ones go silent.

    Returns what the silent ones got back (status line counts), how many the server closed,
    and the longest time until it did.
    """
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 200}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    silent: list[tuple[socket.socket, float]] = []
    failed = 0
    for i in range(count):
        try:
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(head + body[: len(body) // 2])
        except OSError:
            failed += 1
            continue
        if i % 2 == 0:
            sock.close()
        else:
            silent.append((sock, time.monotonic()))
    answers: Counter[str] = Counter()
    closed, longest = 0, 0.0
    for sock, opened in silent:
        with sock:
            sock.settimeout(max(0.1, wait_s - (time.monotonic() - opened)))
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
                closed += 1
                longest = max(longest, time.monotonic() - opened)
            except OSError:
                pass
            answers[data.split(b"\r\n", 1)[0].decode(errors="replace") or "(nothing)"] += 1
    return {"opened": count - failed, "connect_failures": failed, "hung_up": (count + 1) // 2,
            "silent": len(silent), "silent_closed_by_server": closed, "silent_answers": dict(answers),
            "longest_until_closed_s": round(longest, 1)}


def health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/health", timeout=10) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


@contextlib.contextmanager
def start_server(bundle: Path, queue: int, extra: list[str], telemetry: Path | None = None) -> Iterator[str]:
    """`slmforge serve BUNDLE` on a free port until the block ends (telemetry in a temporary folder unless given)."""
    with server_process(bundle, queue, extra, telemetry) as (url, _):
        yield url


@contextlib.contextmanager
def server_process(bundle: Path, queue: int, extra: list[str],
                   telemetry: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``start_server``'s URL and the server's process (whose memory a bench reads from /proc)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="slmforge-load-"))
    cmd = [sys.executable, "-m", "slmforge.cli", "serve", str(bundle), "--port", str(port), "--queue", str(queue),
           "--telemetry", str(telemetry or workdir / "telemetry.db"), *extra]
    with open(workdir / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while health(url) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {(workdir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None}
    return {"p50_ms": round(float(np.percentile(seconds, 50)) * 1000, 1),
            "p95_ms": round(float(np.percentile(seconds, 95)) * 1000, 1)}


def run_load(url: str, clients: int, requests: int, max_tokens: int, baseline_n: int,
             distinct: int = len(QUESTIONS), duration_s: float | None = None, half_open: int = 0) -> dict[str, Any]:
    questions = QUESTIONS[:max(1, distinct)]
    baseline = [post_chat(url, questions[i % len(questions)], max_tokens, 900) for i in range(baseline_n)]
    results: list[tuple[int, float, dict[str, str]]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s if duration_s else None

    def client(c: int) -> None:
        r = 0
        while (time.monotonic() < stop_at) if stop_at else r < requests:
            out = post_chat(url, questions[(c * requests + r) % len(questions)], max_tokens, 900)
            r += 1
            with lock:
                results.append(out)

    slow: dict[str, Any] = {}
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    if half_open:
        threads.append(threading.Thread(target=lambda: slow.update(half_open_connections(url, half_open))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    drained = None
    for _ in range(60):  # the last refused clients may return before the running job ends
        drained = health(url)
        if drained and drained["queue"]["inflight"] == 0:
            break
        time.sleep(0.5)
    codes = Counter(code for code, _, _ in results)
    ok = [s for code, s, _ in results if code == 200]
    base = percentiles([s for code, s, _ in baseline if code == 200])
    loaded = percentiles(ok)
    return {
        "clients": clients, "requests_per_client": None if duration_s else requests, "duration_s": duration_s, "max_tokens": max_tokens, "distinct_questions": len(questions),
        "total": len(results), "wall_s": round(wall, 1),
        "status_counts": {str(k): v for k, v in sorted(codes.items())},
        "server_errors_5xx": sum(v for k, v in codes.items() if k >= 500 and k != 503),
        "refused_429_503": codes.get(429, 0) + codes.get(503, 0),
        "refused_without_retry_after": sum(1 for code, _, h in results if code in (429, 503) and not h.get("Retry-After")),
        "connection_failures": codes.get(0, 0),
        "routes": dict(Counter(h.get("route", "") for code, _, h in results if code == 200)),
        "latency_answered": loaded, "latency_baseline_unloaded": base,
        "p50_ratio_vs_unloaded": round(loaded["p50_ms"] / base["p50_ms"], 2) if ok and base["p50_ms"] else None,
        "answered_per_s": round(len(ok) / wall, 2) if wall > 0 else None,
        "half_open": slow or None,
        "health_after": drained,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="bundle to serve (or use --url)")
    parser.add_argument("--url", help="an already running server instead of starting one")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--baseline", type=int, default=5, help="unloaded requests measured first")
    parser.add_argument("--no-cache", action="store_true", help="serve with --no-cache (every request generates)")
    parser.add_argument("--distinct", type=int, default=len(QUESTIONS),
                        help="how many different questions the clients ask (1 = all but the first hit the cache)")
    parser.add_argument("--duration", type=float, help="seconds each client keeps asking (instead of --requests)")
    parser.add_argument("--half-open", type=int, default=0,
                        help="connections that send half a body during the load (half hang up, half go silent)")
    parser.add_argument("--parallel", type=int, help="serve --parallel N (default: the bundle's profile)")
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    args = parser.parse_args(argv)
    if not args.url and not args.bundle:
        parser.error("give a BUNDLE or --url")
    extra = (["--no-cache"] if args.no_cache else []) + (["--parallel", str(args.parallel)] if args.parallel else [])
    server = contextlib.nullcontext(args.url) if args.url else start_server(args.bundle, args.queue, extra)
    with server as url:
        result = run_load(url, args.clients, args.requests, args.max_tokens, args.baseline, args.distinct,
                          duration_s=args.duration, half_open=args.half_open)
    result["queue"] = args.queue
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = result["server_errors_5xx"] == 0 and result["connection_failures"] == 0 and result["health_after"]
    if result["half_open"]:
        ok = ok and result["half_open"]["silent_closed_by_server"] == result["half_open"]["silent"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
