"""`data qa`: SFT chat examples from FAQ documents and existing QA files, with a held-out split.

Writes three files next to each other so later stages find them by name:
``qa.jsonl`` (train), ``qa.heldout.jsonl`` (unseen questions for evaluation) and
``qa.slmforge.json`` (the manifest: inputs with sha256, params, seed, counts).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from slmforge.trainer.faq import QAPair, extract_pairs
from slmforge.trainer.ingest import InputFile, collect_files, read_text
from slmforge.trainer.pii import CLASSES, DEFAULT_CLASSES, redact

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, atomic_write_text
from slmforge.manifest import ArtifactManifest, input_ref


def sibling(out: Path, suffix: str) -> Path:
    """``qa.jsonl`` → ``qa<suffix>`` (e.g. ``qa.heldout.jsonl``, ``qa.slmforge.json``)."""
    return out.with_name(out.name[: -len(out.suffix)] + suffix if out.suffix else out.name + suffix)


def _pair_from_record(path: Path, lineno: int, obj: dict[str, Any], source: str) -> QAPair:
    """A messages / alpaca / question-answer JSONL record as one (question, answer) pair."""
    where = f"{path}:{lineno}"
    if "messages" in obj:
        msgs = obj["messages"]
        if (not isinstance(msgs, list) or not msgs
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)):
            raise UserError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
        users = [m["content"] for m in msgs if m.get("role") == "user"]
        if msgs[-1].get("role") != "assistant" or not users:
            raise UserError(f"{where}: messages must contain a user turn and end with the assistant's answer")
        return QAPair(users[-1].strip(), msgs[-1]["content"].strip(), source)
    if "instruction" in obj and "output" in obj:
        fields = (obj["instruction"], obj.get("input", ""), obj["output"])
        if not all(isinstance(v, str) for v in fields):
            raise UserError(f"{where}: alpaca fields instruction/input/output must be strings")
        question = obj["instruction"].strip() + ("\n\n" + obj["input"].strip() if obj.get("input", "").strip() else "")
        return QAPair(question, obj["output"].strip(), source)
    if isinstance(obj.get("question"), str) and isinstance(obj.get("answer"), str):
        return QAPair(obj["question"].strip(), obj["answer"].strip(), source)
    raise UserError(f"{where}: unrecognized record with fields {sorted(obj)}; expected chat \"messages\", alpaca "
                    "\"instruction\"/\"input\"/\"output\", or \"question\"/\"answer\"")


def read_pairs(f: InputFile, max_answer_chars: int | None) -> list[QAPair]:
    """Pairs from one input: extracted from a document, or converted from a JSONL file."""
    from slmforge.trainer.datasets import iter_jsonl

    text = read_text(f.path)
    if f.kind != "jsonl":
        return extract_pairs(text, f.kind, f.source, max_answer_chars=max_answer_chars)
    pairs = []
    for lineno, obj in iter_jsonl(f.path):
        pair = _pair_from_record(f.path, lineno, obj, f"{f.source}:{lineno}")
        if not pair.question or not pair.answer:
            raise UserError(f"{f.path}:{lineno}: empty question or answer; fill it in or remove the line")
        pairs.append(pair)
    return pairs


def split_heldout(n: int, fraction: float, seed: int) -> set[int]:
    """Seeded held-out indices: round(fraction·n), at least one when n ≥ 2 and fraction > 0, never all."""
    if fraction <= 0 or n < 2:
        return set()
    count = min(n - 1, max(1, round(fraction * n)))
    return set(random.Random(seed).sample(range(n), count))


def _jsonl(pairs: list[QAPair]) -> str:
    return "".join(json.dumps(p.record(), ensure_ascii=False) + "\n" for p in pairs)


def build_qa(paths: list[str | Path], out: str | Path, heldout_fraction: float = 0.1, seed: int = 0,
             max_answer_chars: int | None = 1500,
             redact_classes: frozenset[str] = DEFAULT_CLASSES) -> dict[str, Any]:
    """Collect, clean, deduplicate and split QA pairs; write qa.jsonl, qa.heldout.jsonl, qa.slmforge.json."""
    start = time.perf_counter()
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the file to write, e.g. {out / 'qa.jsonl'}")
    files, _ = collect_files(paths)
    pairs: list[QAPair] = []
    per_file: Counter[str] = Counter()
    for f in files:
        found = read_pairs(f, max_answer_chars)
        per_file[f.source] = len(found)
        pairs.extend(found)
    if not pairs:
        raise UserError(f"no question/answer pairs in {len(files)} input file(s); FAQ sections need headings ending "
                        "in '?' (reST or Markdown '## Question?'), or pass a messages/alpaca JSONL file")
    pii: Counter[str] = Counter()
    unique: dict[str, QAPair] = {}
    for p in pairs:
        key = " ".join(p.question.lower().split())
        if key in unique:
            continue
        answer = p.answer
        if redact_classes:
            answer, found = redact(answer, redact_classes)
            pii.update(found)
        unique[key] = QAPair(p.question, answer, p.source)
    kept = list(unique.values())
    held = split_heldout(len(kept), heldout_fraction, seed)
    train = [p for i, p in enumerate(kept) if i not in held]
    heldout = [p for i, p in enumerate(kept) if i in held]
    stats = {"files_read": len(files), "pairs_found": len(pairs), "duplicate_questions": len(pairs) - len(kept),
             "pairs": len(kept), "train_pairs": len(train), "heldout_pairs": len(heldout),
             "pii": {c.upper(): pii.get(c.upper(), 0) for c in CLASSES if c in redact_classes},
             "pairs_by_file": {k: v for k, v in sorted(per_file.items()) if v},
             "files": {"train": str(out), "heldout": str(sibling(out, ".heldout.jsonl")),
                       "manifest": str(sibling(out, ".slmforge.json"))}}
    inputs = [input_ref("documents", p) for p in paths]
    atomic_write_text(out, _jsonl(train))
    heldout_path = sibling(out, ".heldout.jsonl")
    if heldout:
        atomic_write_text(heldout_path, _jsonl(heldout))
    else:  # an empty JSONL is unreadable as training data; a stale one from an earlier run would mislead
        heldout_path.unlink(missing_ok=True)
    manifest = ArtifactManifest(kind="dataset", stage="qa", inputs=inputs, seed=seed,
                                params={"heldout_fraction": heldout_fraction, "max_answer_chars": max_answer_chars,
                                        "redact": sorted(redact_classes)},
                                metrics={k: v for k, v in stats.items() if k != "files"},
                                duration_s=round(time.perf_counter() - start, 3))
    atomic_write_json(sibling(out, ".slmforge.json"), manifest.model_dump(mode="json"))
    return stats
