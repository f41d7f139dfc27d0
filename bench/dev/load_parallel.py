"""`serve --parallel N` under load, in one run: 1 client against 8 at once, then 32 clients for 60 s.

Why one run: the issue's figures are ratios (8 clients' aggregate decode tok/s against one client's, their
p50 latency against the unloaded one), and on a shared CPU only figures taken side by side compare.
Every request generates (``--no-cache``). Three decode rates are reported per phase: the batched decode
alone (``/health`` batch: generated tokens per second of the steps that held no prompt tokens: what
batching buys), the server's steps (the same, prompt chunks that rode along included) and end to end (completion tokens answered per second of wall time, prefill and
retrieval included). The overload phase counts statuses (429/503 with Retry-After are refusals, other
5xx are errors); afterwards the telemetry database must hold one row per request sent. Before that,
one client alone on servers with each ``--lone-parallel`` value (default 1 and 4): what batching costs a
lone user (latency per answer and time to first token, streamed, ratios against ``--parallel 1``).

    python -m slmforge.bench.dev.load_parallel BUNDLE [--parallel 8] [--clients 8] [--requests 3]
        [--lone-parallel 1,4] [--lone-requests 6] [--max-tokens 64] [--overload-clients 32] [--duration 60]
        [--k 4] [--out bench/results/load_parallel.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from slmforge.bench.dev.load_test import QUESTIONS, health, percentiles, post_chat, run_load, start_server
from slmforge.bench.plots import pyplot

from slmforge.fileio import atomic_write_bytes, atomic_write_json

ROUTE = "/v1/chat/completions"


def _batch(url: str) -> dict[str, Any]:
    return (health(url) or {}).get("batch") or {}


def stream_chat(url: str, question: str, max_tokens: int, timeout_s: float) -> tuple[int, float, dict[str, Any]]:
    """(status, seconds, {completion_tokens, ttft_s}) of one streamed chat request: the time to first token is
    the time until the first chunk with text, as a person sees it."""
    body = json.dumps({"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + ROUTE, data=body, method="POST", headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            for raw in resp:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    first = time.perf_counter() - start
                tokens = int((chunk.get("usage") or {}).get("completion_tokens") or tokens)
            return resp.status, time.perf_counter() - start, {"completion_tokens": tokens, "ttft_s": first}
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, time.perf_counter() - start, {}
    except (urllib.error.URLError, OSError, ValueError):
        return 0, time.perf_counter() - start, {}


def run_phase(url: str, clients: int, requests: int, max_tokens: int, offset: int = 0) -> dict[str, Any]:
    """``clients`` at once, each asking ``requests`` different questions one after another (streamed)."""
    results: list[tuple[int, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            out = stream_chat(url, QUESTIONS[(offset + c * requests + r) % len(QUESTIONS)], max_tokens, 900)
            with lock:
                results.append(out)

    before = _batch(url)
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    after = _batch(url)
    ok = [(s, h) for code, s, h in results if code == 200]
    tokens = sum(int(h.get("completion_tokens") or 0) for _, h in ok)
    busy = after.get("busy_s", 0) - before.get("busy_s", 0)
    decoded = after.get("decoded_tokens", 0) - before.get("decoded_tokens", 0)
    alone = after.get("decode_only_tokens", 0) - before.get("decode_only_tokens", 0)
    alone_s = after.get("decode_only_s", 0) - before.get("decode_only_s", 0)
    return {"clients": clients, "requests": len(results), "answered": len(ok),
            "statuses": sorted({code for code, _, _ in results}), "wall_s": round(wall, 1),
            "completion_tokens": tokens, "answered_tok_s": round(tokens / wall, 2) if wall > 0 else None,
            "server_decode_tok_s": round(decoded / busy, 2) if busy > 0 else None,
            "decode_only_tok_s": round(alone / alone_s, 2) if alone_s > 0 else None,
            "prompt_tokens": after.get("prompt_tokens", 0) - before.get("prompt_tokens", 0),
            "batched_steps": after.get("steps", 0) - before.get("steps", 0), "decoded_tokens": decoded,
            "latency": percentiles([s for s, _ in ok]),
            "ttft": percentiles([h["ttft_s"] for _, h in ok if h.get("ttft_s") is not None])}


def lone_client(bundle: Path, parallel: int, requests: int, max_tokens: int, k: int) -> dict[str, Any]:
    """One client alone on a server started with ``--parallel parallel`` (after one warm-up answer)."""
    with start_server(bundle, 8, ["--no-cache", "--parallel", str(parallel), "--k", str(k)]) as url:
        stream_chat(url, QUESTIONS[-1], max_tokens, 900)
        phase = run_phase(url, 1, requests, max_tokens)
        phase["kept_prefix"] = _batch(url).get("kept_prefix")
    return {"parallel": parallel, **phase}


def telemetry_rows(db: Path) -> dict[str, Any]:
    """Chat rows in the server's telemetry database, by status (read after the server stopped)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute('SELECT "http.response.status_code", count(*) FROM requests WHERE "http.route" = ? '
                            "GROUP BY 1", (ROUTE,)).fetchall()
    return {"total": sum(n for _, n in rows), "by_status": {str(code): n for code, n in rows}}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def plot(result: dict[str, Any], path: Path) -> None:
    """Three panels: tok/s of 1 against 8 clients, their latency, and the 32-client statuses."""
    plt = pyplot()
    one, many, over = result["one_client"], result["many_clients"], result["overload"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    labels = [f"{one['clients']} client", f"{many['clients']} clients"]
    width = 0.38
    for i, (key, name) in enumerate([("decode_only_tok_s", "decode steps alone"),
                                     ("server_decode_tok_s", "all steps (prompt chunks too)"),
                                     ("answered_tok_s", "answered (end to end)")]):
        values = [one.get(key) or 0, many.get(key) or 0]
        bars = axes[0].bar([x + (i - 1) * width * 0.7 for x in range(2)], values, width * 0.7, label=name)
        axes[0].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[0].set_xticks(range(2), labels)
    axes[0].set_ylabel("tokens / s (aggregate)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"decode alone {result['ratios'].get('decode_only_tok_s')}x, "
                      f"end to end {result['ratios']['answered_tok_s']}x", fontsize=9)
    for i, key in enumerate(["p50_ms", "p95_ms"]):
        values = [(one["latency"][key] or 0) / 1000, (many["latency"][key] or 0) / 1000]
        bars = axes[1].bar([x + (i - 0.5) * width for x in range(2)], values, width, label=key.split("_")[0])
        axes[1].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[1].set_xticks(range(2), labels)
    axes[1].set_ylabel("latency of an answer (s)")
    axes[1].legend(fontsize=8)
    axes[1].set_title(f"p50 {result['ratios']['p50_latency']}x unloaded", fontsize=9)
    counts = over["status_counts"]
    bars = axes[2].bar(list(counts), list(counts.values()), color="tab:gray")
    axes[2].bar_label(bars, fontsize=8)
    axes[2].set_yscale("log")  # a few answered beside thousands refused
    axes[2].set_xlabel("HTTP status")
    axes[2].set_title(f"{over['clients']} clients for {over['duration_s']:.0f} s: {over['server_errors_5xx']} errors, "
                      f"{result['telemetry']['lost_rows']} telemetry rows lost", fontsize=9)
    lone = result.get("lone") or []
    names = [f"--parallel {r['parallel']}" for r in lone]
    for i, key in enumerate(["latency", "ttft"]):
        values = [(r[key]["p50_ms"] or 0) / 1000 for r in lone]
        bars = axes[3].bar([x + (i - 0.5) * width for x in range(len(lone))], values, width,
                           label="answer p50" if key == "latency" else "first token p50")
        axes[3].bar_label(bars, fmt="%.2f", fontsize=8)
    axes[3].set_xticks(range(len(lone)), names)
    axes[3].set_ylabel("s")
    axes[3].legend(fontsize=8)
    axes[3].set_title("one client alone: what batching costs it", fontsize=9)
    fig.suptitle(f"slmforge serve --parallel {result['parallel']} on {result['bundle']} "
                 f"({os.cpu_count()} CPUs, {result['max_tokens']}-token answers)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="questions each client asks in the 1 and N phases")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--overload-clients", type=int, default=32)
    parser.add_argument("--overload-max-tokens", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--k", type=int, default=4, help="passages per question (serve --k): shorter prompts, less prefill")
    parser.add_argument("--lone-parallel", default="1,4", help="servers a lone client is timed on (comma list)")
    parser.add_argument("--lone-requests", type=int, default=6, help="questions the lone client asks each of them")
    parser.add_argument("--out", type=Path, default=Path("bench/results/load_parallel.json"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the server it started
    db = Path(tempfile.mkdtemp(prefix="slmforge-load-parallel-")) / "telemetry.db"
    sent = 0
    lone = []
    for p in [int(x) for x in args.lone_parallel.split(",") if x.strip()]:
        lone.append(lone_client(args.bundle, p, args.lone_requests, args.max_tokens, args.k))
        atomic_write_json(args.out, {"complete": False, "lone": lone})  # a run cut by a timeout keeps this
    base = lone[0] if lone else None
    lone_ratios = {f"parallel_{r['parallel']}": {
        "p50_latency": _ratio(r["latency"]["p50_ms"], base["latency"]["p50_ms"]),
        "p50_ttft": _ratio(r["ttft"]["p50_ms"], base["ttft"]["p50_ms"])} for r in lone[1:]} if base else {}
    with start_server(args.bundle, args.queue, ["--no-cache", "--parallel", str(args.parallel), "--k", str(args.k)], telemetry=db) as url:
        post_chat(url, QUESTIONS[-1], args.max_tokens, 900)  # warm-up: first-call costs stay out of the figures
        one = run_phase(url, 1, args.requests + 1, args.max_tokens)
        atomic_write_json(args.out, {"complete": False, "lone": lone, "one_client": one})
        many = run_phase(url, args.clients, args.requests, args.max_tokens)
        atomic_write_json(args.out, {"complete": False, "lone": lone, "one_client": one, "many_clients": many})
        over = run_load(url, args.overload_clients, 0, args.overload_max_tokens, baseline_n=0,
                        duration_s=args.duration)
        sent = 1 + one["requests"] + many["requests"] + over["total"]
    rows = telemetry_rows(db)
    result = {
        "complete": True, "bundle": args.bundle.name, "parallel": args.parallel, "k": args.k, "queue": args.queue, "max_tokens": args.max_tokens,
        "lone": lone, "lone_ratios_vs_first": lone_ratios,
        "one_client": one, "many_clients": many, "overload": over,
        "ratios": {"decode_only_tok_s": _ratio(many["decode_only_tok_s"], one["decode_only_tok_s"]),
                   "p50_ttft": _ratio(many["ttft"]["p50_ms"], one["ttft"]["p50_ms"]),
                   "server_decode_tok_s": _ratio(many["server_decode_tok_s"], one["server_decode_tok_s"]),
                   "answered_tok_s": _ratio(many["answered_tok_s"], one["answered_tok_s"]),
                   "p50_latency": _ratio(many["latency"]["p50_ms"], one["latency"]["p50_ms"])},
        "telemetry": {"requests_sent": sent, **rows, "lost_rows": sent - rows["total"]},
    }
    atomic_write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    for r in lone:
        print(f"lone client, --parallel {r['parallel']}: p50 {r['latency']['p50_ms']} ms, TTFT p50 {r['ttft']['p50_ms']} ms")
    print(f"decode steps alone {one['decode_only_tok_s']} → {many['decode_only_tok_s']} tok/s "
          f"({result['ratios']['decode_only_tok_s']}x)")
    print(f"{args.out}: decode {one['server_decode_tok_s']} → {many['server_decode_tok_s']} tok/s "
          f"({result['ratios']['server_decode_tok_s']}x), end to end {one['answered_tok_s']} → "
          f"{many['answered_tok_s']} tok/s ({result['ratios']['answered_tok_s']}x), p50 {one['latency']['p50_ms']} → "
          f"{many['latency']['p50_ms']} ms ({result['ratios']['p50_latency']}x); {args.overload_clients} clients: "
          f"{over['status_counts']}, 5xx errors {over['server_errors_5xx']}, telemetry lost {sent - rows['total']}")
    ok = over["server_errors_5xx"] == 0 and over["connection_failures"] == 0 and sent == rows["total"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
