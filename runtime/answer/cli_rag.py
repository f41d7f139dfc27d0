"""`slmforge data rag`: QA pairs → SFT examples in the bundle's own RAG prompt, with citations."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, format_table, json_option
from slmforge.rag_prompt import UNANSWERABLE_FROM


@click.command("rag", short_help="QA → SFT examples in the runtime's RAG prompt (context, distractors, [n]).")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Bundle whose retriever, index, system prompt and chat template the examples use.")
@click.option("--qa", "qa_file", required=True, type=click.Path(path_type=Path), help="QA file from 'slmforge data qa'.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="SFT JSONL to write (chat messages).")
@click.option("--heldout", type=click.Path(path_type=Path),
              help="Held-out QA file to filter the same way (generated questions whose passage is not retrieved go).")
@click.option("--heldout-out", type=click.Path(path_type=Path), help="Where the filtered held-out questions go.")
@click.option("--k", type=int, default=4, show_default=True, help="Passages per prompt, as the runtime retrieves.")
@click.option("--seq-len", type=click.IntRange(min=128), default=1024, show_default=True,
              help="Token budget of one example (prompt + answer); use the SFT stage's --seq-len.")
@click.option("--unanswerable-share", type=click.FloatRange(0, 0.5), default=0.15, show_default=True,
              help="Share of examples with no answering passage, whose answer says the documents do not cover it.")
@click.option("--unanswerable-from", type=click.Choice(UNANSWERABLE_FROM), default=UNANSWERABLE_FROM[0],
              show_default=True, help="Where those examples' passages come from: every section but the question's, "
              "or other documents only (its own page's sections half-answer it; docs/training.md).")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def rag(bundle_path: Path, qa_file: Path, out: Path, heldout: Path | None, heldout_out: Path | None, k: int,
        seq_len: int, unanswerable_share: float, unanswerable_from: str, seed: int, as_json: bool) -> None:
    """Render each QA pair exactly as BUNDLE will ask it: its system prompt, the passages its retriever
    finds for the question (the answering one among distractors), and the reference answer followed by
    the number of the passage it came from. A share of examples hold no answering passage and teach the
    model to say so. Generated questions whose passage the retriever misses are dropped. Writes OUT and
    <out>.slmforge.json; train on OUT with 'slmforge train sft --data OUT'."""
    from slmforge.runtime.answer.rag_examples import RagOptions, build_rag_examples

    stats = build_rag_examples(bundle_path, qa_file, out, RagOptions(k, seq_len, unanswerable_share, seed, unanswerable_from),
                               heldout=heldout, heldout_out=heldout_out)
    if as_json:
        emit_json(stats)
        return
    click.echo(format_table(("", "value"), [(key, value) for key, value in stats.items()]))
    click.echo(f"wrote {out}" + (f" and {heldout_out}" if heldout_out else ""))
