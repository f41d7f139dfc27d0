"""Pair two `slmforge eval` runs question by question: what changed between two bundles eval will not compare.

`eval` compares bundles over one index and refuses bundles whose embedders differ (their passages would
not be the same), so a bundle with a tuned embedder is evaluated in its own run. This reads both runs'
answers.jsonl, keeps the questions both answered, and reports each metric of `eval`'s comparison (answer
F1, ROUGE-L, hit@k, citation accuracy, groundedness) as B − A with the paired bootstrap `eval` uses
(`bench.evaluate.compare`), plus how many questions retrieved their source document in A only / B only.

    python -m slmforge.bench.dev.pair_evals A_DIR B_DIR [--label-a stock] [--label-b trained]
        [--system-a NAME] [--system-b NAME] --out FILE.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from slmforge.bench.evaluate import compare
from slmforge.bench.metrics import bootstrap_ci

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json


def rag_rows(run: Path, system: str | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """(system name, RAG metrics per question) of ``system`` (default: the only one) of an eval run."""
    path = run / "answers.jsonl"
    if not path.is_file():
        raise UserError(f"{run}: no answers.jsonl; pass the --out folder of a finished 'slmforge eval'")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    held = [r for r in rows if r.get("kind") == "heldout"]
    names = sorted({name for r in held for name in r["systems"]})
    if system is not None and system not in names:
        raise UserError(f"{path}: no system '{system}' (it has {', '.join(names)})")
    if system is None and len(names) != 1:
        raise UserError(f"{path}: answers of {', '.join(names)}; name the one to pair with --system-a/--system-b")
    name = system or names[0]
    # a run without closed-book answers has no closed_book_f1: absent is "not judged", as eval treats None
    return name, {r["question"]: {"closed_book_f1": None, **r["systems"][name]["rag"]["metrics"]} for r in held}


def pair(a: Path, b: Path, label_a: str, label_b: str, system_a: str | None = None,
         system_b: str | None = None) -> dict[str, Any]:
    """Per-system means with 95 % intervals and the paired differences B − A over the shared questions."""
    _, rows_a = rag_rows(a, system_a)
    _, rows_b = rag_rows(b, system_b)
    shared = [q for q in rows_a if q in rows_b]
    if not shared:
        raise UserError(f"{a} and {b} answered no question in common")
    ra, rb = [rows_a[q] for q in shared], [rows_b[q] for q in shared]
    means: dict[str, dict[str, Any]] = {}
    for label, rows in ((label_a, ra), (label_b, rb)):
        means[label] = {}
        for key in ("f1", "rouge_l", "hit_at_k", "citation_accurate", "cites", "groundedness"):
            values = [float(r[key]) for r in rows if r.get(key) is not None]
            mean, low, high = bootstrap_ci(values) if values else (None, None, None)
            means[label][key] = {"n": len(values), "mean": mean if mean is None else round(mean, 4),
                                 "ci95": None if low is None else [round(low, 4), round(high, 4)]}
    diffs = [d for d in compare(label_b, rb, ra) if d["metric"] != "closed_book_f1"]
    hit_only = {label_a: sum(bool(x["hit_at_k"]) and not y["hit_at_k"] for x, y in zip(ra, rb)),
                label_b: sum(bool(y["hit_at_k"]) and not x["hit_at_k"] for x, y in zip(ra, rb))}
    return {"a": {"label": label_a, "run": str(a)}, "b": {"label": label_b, "run": str(b)}, "questions": len(shared),
            "means": means, "b_minus_a": diffs, "source_found_by_one_only": hit_only}


@click.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--label-a", default="a", show_default=True)
@click.option("--label-b", default="b", show_default=True)
@click.option("--system-a", default=None, help="System of run A to pair (default: its only one).")
@click.option("--system-b", default=None, help="System of run B to pair (default: its only one).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
def main(a: Path, b: Path, label_a: str, label_b: str, system_a: str | None, system_b: str | None, out: Path) -> None:
    try:
        report = pair(a, b, label_a, label_b, system_a, system_b)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report)
    click.echo(f"{report['questions']} questions; {label_b} − {label_a}:")
    for d in report["b_minus_a"]:
        ci = "n/a" if d["ci95"] is None else f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
        delta = "n/a" if d["delta"] is None else f"{d['delta']:+.3f}"
        click.echo(f"  {d['metric']:<18} {delta} {ci}  (n={d['n']})")
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
