"""Decode speed of the batched backend alone: 1 sequence against N at once, no server, no retrieval.

Why: on a small CPU the server's figures mix prefill of long RAG prompts, retrieval and HTTP into
the answer time; this isolates what batching changes, tokens decoded per second of ``llama_decode``
with 1 and with N sequences generating, in one process, rounds alternated so drifting load on a
shared machine touches both alike. The one-at-a-time backend's own decode rate is the reference.

    python -m slmforge.bench.dev.batch_decode BUNDLE_OR_GGUF [--parallel 8] [--tokens 48] [--rounds 3]
        [--out bench/results/batch_decode.json]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

from slmforge.bench.dev.load_test import QUESTIONS
from slmforge.bench.plots import pyplot
from slmforge.runtime.generate.backend import load_backend
from slmforge.runtime.generate.batched import BatchedLlamaBackend
from tqdm import tqdm

from slmforge.fileio import atomic_write_bytes, atomic_write_json


def _together(backend: BatchedLlamaBackend, prompts: list[str], tokens: int) -> float:
    """Decode tok/s of the scheduler's batched steps while ``prompts`` generate at once."""
    before = backend.stats()
    threads = [threading.Thread(target=backend.generate, args=(p,), kwargs={"max_tokens": tokens, "repeat_penalty": 1.1})
               for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = backend.stats()
    return (after["decoded_tokens"] - before["decoded_tokens"]) / max(1e-9, after["busy_s"] - before["busy_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a bundle folder or a .gguf")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/batch_decode.json"))
    args = parser.parse_args(argv)
    model = min(args.model.glob("*.gguf")) if args.model.is_dir() else args.model
    single = load_backend(model, n_ctx=2048, threads=args.threads)
    backend = BatchedLlamaBackend(single, args.parallel)
    prompts = [single.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS[: args.parallel]]
    rates: dict[str, list[float]] = {"one_at_a_time": [], "batched_1": [], f"batched_{args.parallel}": []}
    _together(backend, prompts[:1], 4)  # warm-up
    for _ in tqdm(range(args.rounds), desc="rounds", unit="round"):
        rates["one_at_a_time"].append(single.generate(prompts[0], max_tokens=args.tokens, repeat_penalty=1.1).decode_tok_s)
        rates["batched_1"].append(_together(backend, prompts[:1], args.tokens))
        rates[f"batched_{args.parallel}"].append(_together(backend, prompts, args.tokens))
    backend.close()
    medians = {k: round(statistics.median(v), 2) for k, v in rates.items()}
    ratio = round(medians[f"batched_{args.parallel}"] / medians["batched_1"], 2)
    result: dict[str, Any] = {"model": model.name, "parallel": args.parallel, "tokens": args.tokens,
                              "threads": args.threads, "rounds": args.rounds, "decode_tok_s_median": medians,
                              "decode_tok_s_rounds": {k: [round(x, 2) for x in v] for k, v in rates.items()},
                              "ratio_batched_n_vs_1": ratio}
    atomic_write_json(args.out, result)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(list(medians), list(medians.values()), color=["tab:gray", "tab:blue", "tab:orange"])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylabel("decode tokens / s (aggregate, median of rounds)")
    ax.set_title(f"{model.name}, {args.threads} threads: {args.parallel} sequences = {ratio}x one", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(args.out.with_suffix(".png"), buffer.getvalue())
    print(f"{args.out}: {medians} (batched {args.parallel} vs 1: {ratio}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
