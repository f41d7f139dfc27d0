"""What batching buys on this CPU with no runtime at all: bare llama.cpp decoding 1 sequence vs N in one step.

Why: issue #18 asks 8 clients to decode ≥ 3× one client's tokens per second. ``batch_decode`` measures
our scheduler; this measures the ceiling under it. One llama.cpp context laid out as ``serve --parallel N``
lays out its batched one (``batch_scheduler.batched_context``: the fast path's settings, one KV stream per
sequence), each sequence first filled with ``--context`` random tokens (a RAG prompt's length: the
attention every step pays grows with it), then timed steps of one token for sequence 0 alone and of one
token for each of the N sequences, rounds alternated so a drifting load touches both alike. No sampling
and no Python per token beyond filling the batch: only ``llama_decode``.

    python -m slmforge.bench.dev.bare_batch MODEL.gguf [--parallel 8] [--context 16 700] [--steps 32]
        [--rounds 3] [--threads 2] [--out bench/results/bare_batch.json]   (also writes a PNG beside it)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from slmforge.bench.plots import pyplot, write_png
from slmforge.runtime.generate.batch_scheduler import batched_context
from slmforge.runtime.generate.llamacpp import FAST_SETTINGS, open_llama
from tqdm import tqdm

from slmforge.fileio import atomic_write_json

ROOM = 256  # positions past the filled context in each sequence's window: the timed steps' tokens


class BareBatch:
    """N sequences in one llama.cpp context, each with ``context`` tokens in its own KV stream."""

    def __init__(self, model: Path, parallel: int, context: int, threads: int) -> None:
        import llama_cpp

        self.lib, self.ctx, self.batch = llama_cpp, None, None
        self.llm = open_llama(model, FAST_SETTINGS, n_ctx=context + ROOM)  # the weights, mapped once
        try:
            self.ctx = batched_context(self.llm, parallel, context + ROOM, threads)  # as serve --parallel makes it
            self.batch = llama_cpp.llama_batch_init(512, 0, 1)
            self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.llm._model.model)))
            self.context, self.rng = context, random.Random(0)
            for seq in range(parallel):
                tokens = [self._token() for _ in range(context)]
                for start in range(0, context, 512):
                    part = tokens[start:start + 512]
                    self._decode([(t, start + i, seq) for i, t in enumerate(part)])
        except BaseException:
            self.close()
            raise
        self.pos = dict.fromkeys(range(parallel), context)

    def _token(self) -> int:
        return self.rng.randrange(100, self.n_vocab)

    def _decode(self, items: list[tuple[int, int, int]]) -> None:
        self.batch.n_tokens = len(items)
        for i, (token, pos, seq) in enumerate(items):
            self.batch.token[i], self.batch.pos[i], self.batch.n_seq_id[i] = token, pos, 1
            self.batch.seq_id[i][0], self.batch.logits[i] = seq, True
        if self.lib.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")
        self.lib.llama_synchronize(self.ctx)

    def rate(self, seqs: list[int], steps: int) -> float:
        """Tokens per second of ``steps`` steps that each decode one token of every sequence in ``seqs``;
        the sequences are rolled back afterwards, so every round sees the same context length."""
        started = time.perf_counter()
        for _ in range(steps):
            self._decode([(self._token(), self.pos[s], s) for s in seqs])
            for s in seqs:
                self.pos[s] += 1
        elapsed = time.perf_counter() - started
        memory = self.lib.llama_get_memory(self.ctx)
        for s in seqs:
            self.lib.llama_memory_seq_rm(memory, s, self.context, -1)
            self.pos[s] = self.context
        return len(seqs) * steps / elapsed

    def close(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        self.llm.close()


def measure(model: Path, parallel: int, context: int, steps: int, rounds: int, threads: int) -> dict[str, Any]:
    bare = BareBatch(model, parallel, context, threads)
    try:
        bare.rate([0], 4)  # warm-up
        one, many = [], []
        for _ in tqdm(range(rounds), desc=f"context {context}", unit="round"):
            one.append(bare.rate([0], steps))
            many.append(bare.rate(list(range(parallel)), steps))
    finally:
        bare.close()
    m1, mn = round(statistics.median(one), 1), round(statistics.median(many), 1)
    return {"context": context, "one_tok_s": m1, "batched_tok_s": mn, "ratio": round(mn / m1, 2), "rounds": {"one": [round(x, 1) for x in one], "batched": [round(x, 1) for x in many]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a bundle folder or a .gguf")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--context", type=int, nargs="+", default=[16, 700], help="tokens already in each sequence")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bare_batch.json"))
    args = parser.parse_args(argv)
    if not 1 <= args.steps <= ROOM:
        parser.error(f"--steps must be 1..{ROOM}: each sequence has room for that many tokens past its context")
    model = min(args.model.glob("*.gguf")) if args.model.is_dir() else args.model
    rows = [measure(model, args.parallel, c, args.steps, args.rounds, args.threads) for c in args.context]
    result = {"model": model.name, "parallel": args.parallel, "threads": args.threads, "steps": args.steps,
              "settings": "the fast path's (flash attention, f16 KV), one KV stream per sequence", "rows": rows}
    atomic_write_json(args.out, result)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.38
    for i, row in enumerate(rows):
        bars = ax.bar([i - width / 2, i + width / 2], [row["one_tok_s"], row["batched_tok_s"]], width,
                      color=["tab:gray", "tab:orange"], label=["1 sequence", f"{args.parallel} sequences"] if i == 0 else None)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.annotate(f"{row['ratio']}x", (i, max(row["one_tok_s"], row["batched_tok_s"]) * 1.08), ha="center", fontsize=9)
    ax.set_xticks(range(len(rows)), [f"{r['context']} tokens in each sequence" for r in rows])
    ax.set_ylabel("decode tokens / s (aggregate, median of rounds)")
    ax.set_ylim(0, max(r["batched_tok_s"] for r in rows) * 1.25)
    ax.set_title(f"bare llama.cpp, {model.name}, {args.threads} threads", fontsize=9)
    ax.legend(fontsize=8)
    write_png(plt, fig, args.out.with_suffix(".png"))
    for row in rows:
        print(f"context {row['context']}: 1 sequence {row['one_tok_s']} tok/s, {args.parallel} sequences "
              f"{row['batched_tok_s']} tok/s ({row['ratio']}x)")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
