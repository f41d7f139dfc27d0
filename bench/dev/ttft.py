"""RAG time to first token of a bundle, today's answer path against the fast one, from one run.

Both engines are loaded in this process on the same bundle and threads; each FAQ question is asked of
both in turn (legacy, fast, legacy, fast, …: a loaded machine slows both alike), the way a server asks
them: one loaded engine, question after question, so each keeps whatever KV prefix its previous
request left. Time to first token is from the question to the first streamed text (embedding,
retrieval, prompt fitting, prefill, first decode step), as a user waits for it.

    python -m slmforge.bench.dev.ttft BUNDLE --qa QA.jsonl [--questions 20] [--threads 2]
        [--out bench/results/ttft.json]   (also writes a PNG beside it)
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import click
from slmforge.bench.measure import time_to_first_delta
from slmforge.runtime.answer.engine import Engine, answer_path
from slmforge.runtime.bundle.reader import open_bundle
from tqdm import tqdm

from slmforge.fileio import atomic_write_json
from slmforge.qa_records import read_qa

WARM_UP = "Which Python version does this documentation describe?"
ANSWER_TOKENS = 8  # enough to see the first token; the decode after it is not what this measures


def faq_questions(paths: tuple[Path, ...], n: int) -> list[str]:
    """The first ``n`` distinct FAQ questions of the QA files (other origins if FAQ ones run out)."""
    records = [r for path in paths for r in read_qa(path)]
    ordered = [r for r in records if r.origin == "faq"] + [r for r in records if r.origin != "faq"]
    seen: dict[str, None] = {}
    for record in ordered:
        seen.setdefault(record.question, None)
    return list(seen)[:n]


def one(engine: Engine, question: str) -> dict[str, Any]:
    stream = engine.answer_stream(question, max_tokens=ANSWER_TOKENS)
    ttft_ms, _ = time_to_first_delta(stream)
    answer = stream.result
    return {"ttft_ms": round(ttft_ms, 1), "prompt_tokens": answer.tokens["prompt"],
            "prefill_ms": answer.timings.get("prefill_ms"), "chunks": len(answer.citations)}


def measure(bundle_path: Path, questions: list[str], threads: int | None) -> dict[str, Any]:
    bundle = open_bundle(bundle_path)
    engines = {name: Engine(bundle, threads=threads,  # the fast path as the bundle runs it: its profile applied
                            path=answer_path(legacy=name == "legacy", profile_name=bundle.manifest.profile))
               for name in ("legacy", "fast")}
    try:
        for engine in engines.values():  # warm-up: first-call costs (page faults, thread start) out of the figures,
            one(engine, WARM_UP)  # on a question not measured (one measured would find its prompt cached: ~0 ms)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
        for question in tqdm(questions, desc="TTFT legacy vs fast", unit="q", file=sys.stderr):
            for name, engine in engines.items():
                rows[name].append({"question": question, **one(engine, question)})
        n_ctx = {name: engine.n_ctx for name, engine in engines.items()}
    finally:
        for engine in engines.values():
            engine.close()
    summary = {}
    for name, runs in rows.items():
        ttft = [r["ttft_ms"] for r in runs]
        summary[name] = {"ttft_p50_ms": round(statistics.median(ttft), 1),
                         "ttft_p90_ms": round(statistics.quantiles(ttft, n=10)[-1], 1) if len(ttft) > 1 else ttft[0],
                         "prompt_tokens_p50": statistics.median(r["prompt_tokens"] for r in runs),
                         "prefill_ms_p50": statistics.median(r["prefill_ms"] or 0.0 for r in runs),
                         "n_ctx": n_ctx[name]}
    ratio = summary["legacy"]["ttft_p50_ms"] / summary["fast"]["ttft_p50_ms"]
    return {"bundle": str(bundle_path), "threads": engines["fast"].threads, "questions": len(questions),
            "answer_tokens": ANSWER_TOKENS, "summary": summary, "legacy_over_fast_p50": round(ratio, 2),
            "runs": rows}


def plot(result: dict[str, Any], png: Path) -> None:
    from slmforge.bench.plots import pyplot, write_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in ("legacy", "fast"):
        ax.plot([r["ttft_ms"] for r in result["runs"][name]], marker="o", label=(
            f"{name}: p50 {result['summary'][name]['ttft_p50_ms']:.0f} ms, "
            f"{result['summary'][name]['prompt_tokens_p50']:.0f} prompt tokens"))
    ax.set_xlabel("FAQ question (asked of both in turn)")
    ax.set_ylabel("time to first token, ms")
    ax.set_ylim(bottom=0)
    ax.set_title(f"RAG time to first token: legacy ÷ fast = {result['legacy_over_fast_p50']}× (p50, one run)")
    ax.legend()
    write_png(plt, fig, png)


@click.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--qa", "qa_files", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="QA files whose FAQ questions are asked (repeatable).")
@click.option("--questions", default=20, show_default=True, type=click.IntRange(2))
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results/ttft.json"), show_default=True)
def main(bundle: Path, qa_files: tuple[Path, ...], questions: int, threads: int | None, out: Path) -> None:
    """RAG time to first token, legacy vs fast answer path, p50 over FAQ questions."""
    result = measure(bundle, faq_questions(qa_files, questions), threads)
    for name, row in result["summary"].items():
        click.echo(f"{name:6s} TTFT p50 {row['ttft_p50_ms']} ms (p90 {row['ttft_p90_ms']}), prompt "
                   f"{row['prompt_tokens_p50']} tokens, prefill p50 {row['prefill_ms_p50']} ms, n_ctx {row['n_ctx']}")
    click.echo(f"legacy ÷ fast (p50): {result['legacy_over_fast_p50']}× over {result['questions']} questions "
               f"(goal ≥ 3)")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    plot(result, out.with_suffix(".png"))
    click.echo(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
