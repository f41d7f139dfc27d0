"""Re-judge the citations of stored `slmforge eval` answers as the runtime now checks them.

The runtime moves an [n] to the passage that holds the words before it (`runtime/answer/citation_check.py`).
Only markers change (the model's words, and everything it generates, stay the same), so any stored run can be
re-judged without generating, under the check as it stands now: the model's own text (the answer of a run made
before the check, its "generated" text after) goes through the checker, each held-out question is retrieved
again through BUNDLE for the passages the model saw (a question whose passages now differ from the stored ones
is skipped and counted), and citation accuracy is judged before and after as eval judges it.

    python -m slmforge.bench.dev.recheck_citations RUN_DIR... --bundle BUNDLE [--system NAME] --out FILE.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from slmforge.bench.dev.pair_evals import rag_rows
from slmforge.bench.metrics import citation_judgement
from slmforge.runtime.answer.citation_check import check_citations
from slmforge.runtime.answer.engine import Engine
from slmforge.runtime.bundle.reader import open_bundle

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json
from slmforge.output import format_table
from slmforge.qa_records import QARecord, chunk_matches
from slmforge.rag_prompt import passage_label


def recheck(run: Path, engine: Engine, system: str | None) -> dict[str, Any]:
    """Citation accuracy of one run's answers as generated and as checked, over the questions it can replay."""
    name, _ = rag_rows(run, system)
    rows = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines() if line.strip()]
    k = int(json.loads((run / "eval.json").read_text()).get("k", 4))
    judged = before = after = moved = skipped = 0
    for row in rows:
        reply = row["systems"].get(name, {}).get("rag") if row.get("kind") == "heldout" else None
        if not reply or not row.get("source"):
            continue
        plan, _ = engine.plan(row["question"], k=k)
        if [passage_label(h.source, h.heading) for h in plan.hits] != reply["context"]:
            skipped += 1
            continue
        ref = QARecord(question=row["question"], answer=row["reference"], source=row["source"],
                       section=row.get("section"))
        matches = [chunk_matches(ref, h.source, h.heading) for h in plan.hits]
        generated = reply.get("generated", reply["answer"])  # runs made with the check keep the model's text
        checked, moves = check_citations(generated, [h.text for h in plan.hits], row["question"])
        cites, accurate = citation_judgement(generated, matches)
        if not cites:
            continue
        judged += 1
        before += bool(accurate)
        after += bool(citation_judgement(checked, matches)[1])
        moved += bool(moves)
    return {"run": str(run), "system": name, "judged": judged, "as_generated": before, "checked": after,
            "accuracy_as_generated": round(before / judged, 4) if judged else None,
            "accuracy_checked": round(after / judged, 4) if judged else None,
            "answers_changed": moved, "skipped_retrieval_differs": skipped}


@click.command(help=__doc__)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="A bundle over the runs' index.")
@click.option("--system", default=None, help="The system of each run to judge (needed when a run holds several).")
@click.option("--out", required=True, type=click.Path(path_type=Path))
def main(runs: tuple[Path, ...], bundle: Path, system: str | None, out: Path) -> None:
    try:
        engine = Engine(open_bundle(bundle), threads=1)
        results = [recheck(run, engine, system) for run in runs]
    except UserError as err:
        sys.exit(f"error: {err}")
    judged = sum(r["judged"] for r in results)
    total = {"judged": judged, "as_generated": sum(r["as_generated"] for r in results),
             "checked": sum(r["checked"] for r in results)}
    columns = ["run", "judged", "accuracy_as_generated", "accuracy_checked", "answers_changed",
               "skipped_retrieval_differs"]
    click.echo(format_table(columns, [[r[c] for c in columns] for r in results]))
    if judged:
        click.echo(f"all: {total['as_generated']}/{judged} -> {total['checked']}/{judged}")
    atomic_write_json(out, {"bundle": str(bundle), "runs": results, "total": total})
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    main()
