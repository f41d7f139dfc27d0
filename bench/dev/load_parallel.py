"""`serve --parallel N` under load, in one server run: 1 client against 8 at once, then 32 clients for 60 s.

Why one run: the issue's figures are ratios (8 clients' aggregate decode tok/s against one client's, their
p50 latency against the unloaded one), and on a shared CPU only figures taken side by side compare.
Every request generates (``--no-cache``). Two decode rates are reported per phase: the server's own
(``/health`` batch: tokens decoded in batched steps per second those steps took, prompt chunks that
rode along included) and end to end (completion tokens answered per second of wall time, prefill and
retrieval included). The overload phase counts statuses (429/503 with Retry-After are refusals, other
5xx are errors); afterwards the telemetry database must hold one row per request sent.

    python -m slmforge.bench.dev.load_parallel BUNDLE [--parallel 8] [--clients 8] [--requests 3]
        [--max-tokens 64] [--overload-clients 32] [--duration 60] [--k 4] [--out bench/results/load_parallel.json]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from slmforge.bench.dev.load_test import QUESTIONS, health, percentiles, post_chat, run_load, start_server
from slmforge.bench.plots import pyplot

from slmforge.fileio import atomic_write_bytes, atomic_write_json

ROUTE = "/v1/chat/completions"


def _batch(url: str) -> dict[str, Any]:
    return (health(url) or {}).get("batch") or {}


def run_phase(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """``clients`` at once, each asking ``requests`` different questions one after another."""
    results: list[tuple[int, float, dict[str, Any]]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            out = post_chat(url, QUESTIONS[(c * requests + r) % len(QUESTIONS)], max_tokens, 900)
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
    return {"clients": clients, "requests": len(results), "answered": len(ok),
            "statuses": sorted({code for code, _, _ in results}), "wall_s": round(wall, 1),
            "completion_tokens": tokens, "answered_tok_s": round(tokens / wall, 2) if wall > 0 else None,
            "server_decode_tok_s": round(decoded / busy, 2) if busy > 0 else None,
            "batched_steps": after.get("steps", 0) - before.get("steps", 0), "decoded_tokens": decoded,
            "latency": percentiles([s for s, _ in ok])}


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
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    labels = [f"{one['clients']} client", f"{many['clients']} clients"]
    width = 0.38
    for i, (key, name) in enumerate([("server_decode_tok_s", "server decode tok/s"),
                                     ("answered_tok_s", "answered tok/s (end to end)")]):
        values = [one[key] or 0, many[key] or 0]
        bars = axes[0].bar([x + (i - 0.5) * width for x in range(2)], values, width, label=name)
        axes[0].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[0].set_xticks(range(2), labels)
    axes[0].set_ylabel("tokens / s (aggregate)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"decode {result['ratios']['server_decode_tok_s']}x, "
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
    axes[2].set_xlabel("HTTP status")
    axes[2].set_title(f"{over['clients']} clients for {over['duration_s']:.0f} s: {over['server_errors_5xx']} errors, "
                      f"{result['telemetry']['lost_rows']} telemetry rows lost", fontsize=9)
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
    parser.add_argument("--out", type=Path, default=Path("bench/results/load_parallel.json"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the server it started
    db = Path(tempfile.mkdtemp(prefix="slmforge-load-parallel-")) / "telemetry.db"
    sent = 0
    with start_server(args.bundle, args.queue, ["--no-cache", "--parallel", str(args.parallel), "--k", str(args.k)], telemetry=db) as url:
        post_chat(url, QUESTIONS[-1], args.max_tokens, 900)  # warm-up: first-call costs stay out of the figures
        one = run_phase(url, 1, args.requests + 1, args.max_tokens)
        atomic_write_json(args.out, {"complete": False, "one_client": one})  # a run cut by a timeout keeps this
        many = run_phase(url, args.clients, args.requests, args.max_tokens)
        atomic_write_json(args.out, {"complete": False, "one_client": one, "many_clients": many})
        over = run_load(url, args.overload_clients, 0, args.overload_max_tokens, baseline_n=0,
                        duration_s=args.duration)
        sent = 1 + one["requests"] + many["requests"] + over["total"]
    rows = telemetry_rows(db)
    result = {
        "complete": True, "bundle": args.bundle.name, "parallel": args.parallel, "k": args.k, "queue": args.queue, "max_tokens": args.max_tokens,
        "one_client": one, "many_clients": many, "overload": over,
        "ratios": {"server_decode_tok_s": _ratio(many["server_decode_tok_s"], one["server_decode_tok_s"]),
                   "answered_tok_s": _ratio(many["answered_tok_s"], one["answered_tok_s"]),
                   "p50_latency": _ratio(many["latency"]["p50_ms"], one["latency"]["p50_ms"])},
        "telemetry": {"requests_sent": sent, **rows, "lost_rows": sent - rows["total"]},
    }
    atomic_write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
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
