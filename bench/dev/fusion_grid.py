"""hit@k of bundles' own indexes at every BM25 fusion weight of `train retriever`'s grid: a diagnostic.

`train retriever` picks the weight on its validation documents; this shows what each weight of the
grid gives on any question set (the validation questions, or the test ones *after* the choice, never
to make it), split into questions that repeat their gold chunk's heading and the "hard" ones that do
not (`bench retrieval`'s definition), searching each bundle's shipped rag.db with its embedder.

    python -m slmforge.bench.dev.fusion_grid --bundle stock=BUNDLE --bundle trained=BUNDLE --qa QA.jsonl \
        --retriever CKPT --documents heldout_documents|validation_documents --baseline stock --out FILE.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from slmforge.bench.metrics import paired_bootstrap
from slmforge.bench.retrieval_benchmark import repeats_heading
from slmforge.export.retriever_train import FUSION_GRID
from slmforge.runtime.bundle.reader import open_bundle
from slmforge.runtime.index.embedder import Embedder
from slmforge.runtime.index.gold_chunks import DEPTH, gold_chunks, index_chunks, question_scores
from slmforge.runtime.index.store import DEFAULTS, RagIndex

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json
from slmforge.manifest import read_manifest
from slmforge.qa_records import read_qa, same_document


def grid(bundles: dict[str, Path], qa: list[Path], retriever: Path, documents: str, baseline: str) -> dict[str, Any]:
    """Per bundle and weight: mean hit@1/hit@4/nDCG@10 on all and on hard questions; paired diffs to the baseline."""
    names = read_manifest(retriever).params.get(documents)
    if not isinstance(names, list):
        raise UserError(f"{retriever}: slmforge.json has no params.{documents}")
    records = [r for f in qa for r in read_qa(f) if r.source and any(same_document(r.source, d) for d in names)]
    if not records:
        raise UserError(f"no question of the {documents} in {', '.join(map(str, qa))}")
    scores: dict[str, dict[str, list[dict[str, float]]]] = {}
    hard: list[bool] = []
    for name, folder in bundles.items():
        bundle = open_bundle(folder, verify=False)
        with RagIndex(bundle.rag_db, readonly=True) as index:
            chunks = index_chunks(index)
            golds = gold_chunks(records, list(chunks.values()), "questions")
            hard = [not repeats_heading(r.question, g.heading) for r, g in zip(records, golds)]
            questions = [r.question for r in records]
            vectors = Embedder(bundle.embedder_dir, threads=1).embed(questions)
            scores[name] = {}
            for weight in FUSION_GRID:
                scores[name][str(weight)] = question_scores(index, chunks, vectors, questions, [g.key for g in golds],
                                                            {"bm25_weight": weight})
    out: dict[str, Any] = {"questions": len(records), "hard": sum(hard), "documents": documents, "depth": DEPTH,
                           "grid": list(FUSION_GRID), "bundles": {n: str(p) for n, p in bundles.items()}, "by": {}}
    for subset, keep in (("all", [True] * len(records)), ("hard", hard), ("repeats-heading", [not h for h in hard])):
        table: dict[str, Any] = {}
        for name, by_weight in scores.items():
            for weight, rows in by_weight.items():
                kept = [s for s, k in zip(rows, keep) if k]
                if not kept:
                    continue
                entry = {m: round(sum(s[m] for s in kept) / len(kept), 4) for m in ("hit@1", "hit@4", "ndcg@10")}
                if name != baseline and baseline in scores:
                    base = [s for s, k in zip(scores[baseline][str(float(DEFAULTS["bm25_weight"]))], keep) if k]
                    entry[f"hit@4 - {baseline} as bundled"] = paired_bootstrap([s["hit@4"] for s in kept],
                                                                        [s["hit@4"] for s in base])
                table[f"{name}@{weight}"] = {"n": len(kept), **entry}
        out["by"][subset] = table
    return out


@click.command()
@click.option("--bundle", "bundles", multiple=True, required=True, metavar="NAME=DIR")
@click.option("--qa", multiple=True, required=True, type=click.Path(path_type=Path))
@click.option("--retriever", required=True, type=click.Path(path_type=Path))
@click.option("--documents", type=click.Choice(["heldout_documents", "validation_documents"]), required=True)
@click.option("--baseline", default="stock", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path))
def main(bundles: tuple[str, ...], qa: tuple[Path, ...], retriever: Path, documents: str, baseline: str,
         out: Path) -> None:
    try:
        named = {}
        for spec in bundles:
            name, sep, folder = spec.partition("=")
            if not sep:
                raise UserError(f"--bundle {spec}: write it as NAME=DIR")
            named[name] = Path(folder)
        report = grid(named, list(qa), retriever, documents, baseline)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    for subset, table in report["by"].items():
        click.echo(f"{subset}:")
        for key, row in table.items():
            diff = next((v for k, v in row.items() if k.startswith("hit@4 - ")), None)
            extra = f"  Δhit@4 {diff['mean']:+.3f} [{diff['ci95_low']:+.3f}, {diff['ci95_high']:+.3f}]" if diff else ""
            click.echo(f"  {key:<16} n={row['n']:<4} hit@1 {row['hit@1']:.3f}  hit@4 {row['hit@4']:.3f}  "
                       f"nDCG@10 {row['ndcg@10']:.3f}{extra}")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
