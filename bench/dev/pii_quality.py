"""PII redaction quality: recall and precision per class on a labelled sample, and what it changes in technical text.

    python -m slmforge.bench.dev.pii_quality [--sample tests/data/pii_sample.jsonl] [--docs examples/python-docs/docs]
        [--out bench/results/pii_quality.json]

The sample holds one line per item: ``{"text", "label", "value"}``, a realistic sentence with
one value of class ``label``, or a hard negative (``label`` null: versions, dates, hashes,
ports, ISBNs, documentation addresses, code). Every class is enabled while scoring, so a value
taken by the wrong class counts against both. Recall of a class: its items whose value is gone
and counted as that class. Precision: those hits over every finding of the class anywhere in
the sample. The technical-text check runs ``redact`` with the default classes and with all of
them over the shipped Python documentation and lists each change, so mangled content shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from slmforge.trainer.data.pii import CLASSES, DEFAULT_CLASSES, PLACEHOLDERS, redact

from slmforge.assets import example_docs
from slmforge.datafiles import iter_jsonl

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "pii_sample.jsonl"
DOCS = example_docs()


def load_sample(path: Path = SAMPLE) -> list[dict[str, Any]]:
    return [obj for _, obj in iter_jsonl(path)]


def score(items: list[dict[str, Any]], classes: tuple[str, ...] = CLASSES) -> dict[str, dict[str, Any]]:
    """Per class: items, hits, findings, recall, precision and the misses/false alarms by text."""
    per = {c: {"items": 0, "hits": 0, "findings": 0, "missed": [], "false_alarms": []} for c in classes}
    for item in items:
        redacted, counts = redact(item["text"], classes)
        label = item["label"]
        for cls in classes:
            found = counts.get(cls.upper(), 0)
            per[cls]["findings"] += found
            if cls == label:
                per[cls]["items"] += 1
                if found and item["value"] not in redacted:
                    per[cls]["hits"] += 1
                    per[cls]["false_alarms"] += [item["text"]] * (found - 1)
                else:
                    per[cls]["missed"].append(item["text"])
            elif found:
                per[cls]["false_alarms"].append(f"{item['text']} -> {redacted}")
    for row in per.values():
        row["recall"] = round(row["hits"] / row["items"], 3) if row["items"] else None
        row["precision"] = round(row["hits"] / row["findings"], 3) if row["findings"] else None
    return per


def technical_changes(docs: Path, classes: frozenset[str] | tuple[str, ...]) -> dict[str, Any]:
    """What ``redact`` would change in the documents under ``docs`` (cleaned as `data prepare` cleans them)."""
    import re

    from slmforge.trainer.data.ingest import collect_files, read_documents
    from slmforge.trainer.data.textclean import to_plain_text

    files, _ = collect_files([docs])
    counts: Counter[str] = Counter()
    changes: list[str] = []
    placeholder = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS.values()))
    chars = 0
    for doc in read_documents(files):
        text = to_plain_text(doc.text, doc.kind)
        chars += len(text)
        for line in text.splitlines():
            redacted, found = redact(line, classes)
            if found:
                counts.update(found)
                if not placeholder.search(line):
                    changes.append(f"{doc.source}: {line.strip()[:160]} -> {redacted.strip()[:160]}")
    return {"classes": sorted(classes), "documents_chars": chars, "changes": sum(counts.values()),
            "by_class": dict(sorted(counts.items())), "changed_lines": changes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--docs", type=Path, default=DOCS, help="technical text whose changes are counted")
    parser.add_argument("--out", type=Path, help="write the result JSON here")
    args = parser.parse_args(argv)
    items = load_sample(args.sample)
    per = score(items)
    print(f"{len(items)} items ({sum(1 for i in items if i['label'] is None)} hard negatives), all classes enabled")
    print(f"{'class':8} {'items':>5} {'recall':>7} {'precision':>9}  default")
    for cls, row in per.items():
        print(f"{cls:8} {row['items']:5d} {row['recall']!s:>7} {row['precision']!s:>9}  "
              f"{'yes' if cls in DEFAULT_CLASSES else 'no'}")
    technical = {"default": technical_changes(args.docs, DEFAULT_CLASSES), "all": technical_changes(args.docs, CLASSES)}
    for name, tech in technical.items():
        print(f"technical text ({args.docs.name}, {tech['documents_chars']} chars), {name} classes: "
              f"{tech['changes']} changes {tech['by_class']}")
        for line in tech["changed_lines"][:20]:
            print("  ", line)
    result = {"sample": str(args.sample.relative_to(REPO) if args.sample.is_relative_to(REPO) else args.sample),
              "items": len(items), "per_class": per, "default_classes": sorted(DEFAULT_CLASSES),
              "technical_text": technical}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
