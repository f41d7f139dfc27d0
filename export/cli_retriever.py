"""`slmforge train retriever`: fine-tune the RAG embedder on QA pairs of your documents (export/retriever_train.py)."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, json_option


@click.command("retriever")
@click.option("--data", "qa_files", multiple=True, required=True, type=click.Path(path_type=Path),
              help="QA JSONL from 'slmforge data qa' (records name their source document and section); repeatable.")
@click.option("--docs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="The documents the QA pairs were made from (the index's documents); repeatable.")
@click.option("--heldout", "heldout_files", multiple=True, type=click.Path(path_type=Path),
              help="Held-out QA JSONL (e.g. qa.heldout.jsonl): every document it names is left out of training.")
@click.option("--base", type=click.Path(path_type=Path),
              help="Sentence-transformer folder to start from (default: the embedded all-MiniLM-L6-v2).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1, 100))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(2, 4096),
              help="Questions per batch (each is the others' in-batch negative).")
@click.option("--lr", default=2e-5, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--hard-negatives", default=1, show_default=True, type=click.IntRange(0, 16),
              help="Hard negatives per question, mined from the documents' chunks (0: in-batch only).")
@click.option("--heldout-fraction", default=0.25, show_default=True, type=click.FloatRange(0, 0.9),
              help="Share of the other documents (per folder) also held out for the benchmark.")
@click.option("--validation-fraction", default=0.2, show_default=True, type=click.FloatRange(0, 0.9),
              help="Share of the remaining documents (per folder) kept out of training to choose the BM25 fusion "
                   "weight on (0: keep the index's default weight).")
@click.option("--seed", default=0, show_default=True, type=int)
@json_option
def retriever(qa_files: tuple[Path, ...], docs: tuple[Path, ...], heldout_files: tuple[Path, ...], base: Path | None,
              out: Path, epochs: int, batch_size: int, lr: float, hard_negatives: int, heldout_fraction: float,
              validation_fraction: float, seed: int, as_json: bool) -> None:
    """Fine-tune the embedder with in-batch and mined hard negatives, holding out whole documents."""
    from slmforge.export.retriever_train import RetrieverOptions, train_retriever

    opts = RetrieverOptions(epochs=epochs, batch_size=batch_size, lr=lr, hard_negatives=hard_negatives,
                            heldout_fraction=heldout_fraction, validation_fraction=validation_fraction, seed=seed)
    manifest = train_retriever(list(qa_files), list(docs), out, list(heldout_files), base, opts)
    if as_json:
        emit_json({"out": str(out), "metrics": manifest.metrics})
        return
    m = manifest.metrics
    click.echo(f"wrote {out}  {manifest.summary}; loss {m.get('first_logged_loss')} → {m.get('last_logged_loss')} "
               f"in {m.get('steps')} steps ({manifest.duration_s} s)")
    if "bm25_weight" in m:
        by = m["validation"]["by_bm25_weight"]
        click.echo(f"BM25 fusion weight {m['bm25_weight']} (validation hit@4 by weight: "
                   + ", ".join(f"{w}: {row['hit@4']}" for w, row in by.items()) + ")")
        gain = m["validation"].get("tuned_minus_stock")
        if gain:
            click.echo(validation_verdict(m["validation"], m["bm25_weight"]))
    click.echo(f"next: slmforge export … --embedder-source {out}; measure with slmforge bench retrieval --retriever {out}")


def validation_verdict(validation: dict, weight: float) -> str:
    """One line: does the tuned embedder, searched as its bundle will search, beat a stock bundle on the
    validation documents (never trained on)? Said plainly when it does not, so nobody ships it on faith."""
    from slmforge.intervals import difference_text

    d = validation["tuned_minus_stock"]["hit@4"]
    stock = validation["stock_as_bundled"]
    tuned = validation["by_bm25_weight"][str(weight)]
    line = (f"validation as bundled ({validation['questions']} questions of unseen documents): hit@4 stock "
            f"{stock['hit@4']} → tuned {tuned['hit@4']} ({difference_text(d)})")
    if d["mean"] <= 0:
        line += "; the tuned embedder does not beat the stock one here: keep the stock embedder (export without --embedder-source)"
    elif not d["significant"]:
        line += "; the interval includes 0: a gain these few questions cannot confirm"
    return line

