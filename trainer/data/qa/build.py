"""`data qa`: SFT chat examples from FAQ documents, existing QA files and generated pairs, with a held-out split.

Writes three files next to each other so later stages find them by name:
``qa.jsonl`` (train), ``qa.heldout.jsonl`` (unseen questions for evaluation) and
``qa.slmforge.json`` (the manifest: inputs with sha256, params, seed, counts).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.trainer.data.dedup import deduplicate
from slmforge.trainer.data.ingest import InputFile, collect_files, read_text
from slmforge.trainer.data.pii import CLASSES, DEFAULT_CLASSES, redact
from slmforge.trainer.data.qa.faq import QAPair, extract_pairs
from slmforge.trainer.data.qa.generate import AnswerBounds, generate_pairs, passages
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, atomic_write_text, sibling
from slmforge.manifest import ArtifactManifest, input_ref
from slmforge.qa_records import record_from_json


def read_pairs(f: InputFile, max_answer_chars: int | None) -> list[QAPair]:
    """Pairs from one input: extracted from a document, or converted from a JSONL file."""
    from slmforge.datafiles import iter_jsonl

    text = read_text(f.path)
    if f.kind != "jsonl":
        return extract_pairs(text, f.kind, f.source, max_answer_chars=max_answer_chars)
    pairs = []
    for lineno, obj in iter_jsonl(f.path):
        pair = record_from_json(f"{f.path}:{lineno}", obj, default_source=f"{f.source}:{lineno}")
        pairs.append(pair if pair.origin else QAPair(pair.question, pair.answer, pair.source, pair.section, "file"))
    return pairs


def split_heldout(n: int, fraction: float, seed: int) -> set[int]:
    """Seeded held-out indices: round(fraction·n), at least one when n ≥ 2 and fraction > 0, never all."""
    if fraction <= 0 or n < 2:
        return set()
    count = min(n - 1, max(1, round(fraction * n)))
    return set(random.Random(seed).sample(range(n), count))


def _jsonl(pairs: list[QAPair]) -> str:
    return "".join(json.dumps(p.record(), ensure_ascii=False) + "\n" for p in pairs)


GENERATE_MODES = ("auto", "always", "never")
SAMPLES_PER_ORIGIN = 10


@dataclass(frozen=True)
class GenerateOptions:
    """When and how ``data qa`` writes pairs of its own (generate.py rules, optionally a GGUF teacher).

    ``auto`` generates from every document that holds no FAQ pair: a FAQ's curated pairs stay
    as they are, and a manual, tutorial or reference page (no FAQ) is no longer left without
    training data. ``always`` generates from every document; ``never`` is FAQ/QA files only.
    """

    mode: str = "auto"
    teacher: Path | None = None
    teacher_limit: int = 100  # passages the teacher reads (a 135M–1B GGUF takes seconds each on a CPU)
    near_dup_threshold: float = 0.7  # MinHash Jaccard of question word bigrams
    bounds: AnswerBounds = field(default_factory=AnswerBounds)


def _generate(files: list[InputFile], faq_counts: Counter[str], opts: GenerateOptions,
              seed: int) -> tuple[list[QAPair], list[str], dict[str, int]]:
    """Generated pairs (rules, then the teacher) from the documents ``opts.mode`` picks, those documents,
    and the teacher's counts (passages read, pairs that parsed)."""
    chosen = [f for f in files if f.kind != "jsonl"
              and (opts.mode == "always" or (opts.mode == "auto" and not faq_counts[f.source]))]
    pairs: list[QAPair] = []
    for f in chosen:
        pairs.extend(generate_pairs(read_text(f.path), f.kind, f.source, opts.bounds))
    taught = {"passages": 0, "parsed": 0}
    if opts.teacher is not None:
        from slmforge.trainer.data.qa.teacher import Teacher

        todo = [(f.source, heading, passage) for f in chosen for heading, passage in passages(read_text(f.path),
                                                                                                f.kind)]
        picked = sorted(random.Random(seed).sample(range(len(todo)), min(opts.teacher_limit, len(todo))))
        teacher = Teacher(opts.teacher)
        try:
            for i in tqdm(picked, desc="teacher", unit="passage", leave=False):
                pair = teacher.ask(todo[i][2], todo[i][0], todo[i][1])
                taught["passages"] += 1
                if pair is not None:
                    pairs.append(pair)
                    taught["parsed"] += 1
        finally:
            teacher.close()
    return pairs, [f.source for f in chosen], taught


def _question_key(question: str) -> str:
    """The question as compared for duplicates: no articles, no plural 's' ("create a virtual environment"
    and "create virtual environments" ask the same)."""
    words = [w for w in re.findall(r"[\w.()]+", question.lower()) if w not in ("a", "an", "the")]
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words)


def _filter_generated(kept: list[QAPair], generated: list[QAPair], opts: GenerateOptions,
                      redact_classes: frozenset[str], pii: Counter[str]) -> tuple[list[QAPair], dict[str, int]]:
    """Generated pairs whose question is new: exact and near duplicates (of a FAQ question or an earlier
    generated one) dropped; answers redacted like the FAQ's."""
    questions = [_question_key(p.question) for p in kept + generated]
    dedup = deduplicate(questions, threshold=opts.near_dup_threshold, ngram=2)
    keep = {i - len(kept) for i in dedup.keep if i >= len(kept)}
    out = []
    for i, p in enumerate(generated):
        if i not in keep:
            continue
        answer = p.answer
        if redact_classes:
            answer, found = redact(answer, redact_classes)
            pii.update(found)
        out.append(QAPair(p.question, answer, p.source, p.section, p.origin))
    return out, {"found": len(generated), "duplicate_questions": len(generated) - len(out)}


def heldout_documents(sources: list[str], fraction: float, seed: int) -> set[str]:
    """Seeded whole documents whose pairs make up about ``fraction`` of all pairs: at least one, never all.

    Unlike ``data prepare`` (which counts documents), this weighs documents by their pairs: one API
    reference page can hold a quarter of a corpus's generated questions, and holding it out by
    document count alone would take that quarter away from training.
    """
    sizes = Counter(sources)
    ids = sorted(sizes)
    if fraction <= 0 or len(ids) < 2:
        return set()
    random.Random(seed).shuffle(ids)
    target = fraction * len(sources)
    held: set[str] = set()
    count = 0
    for doc in ids:
        if count >= target:
            break
        if count + sizes[doc] <= 1.5 * target:
            held.add(doc)
            count += sizes[doc]
    if not held:  # every document is bigger than the share: hold out the smallest
        held = {min(ids, key=lambda d: (sizes[d], d))}
    return held if len(held) < len(ids) else held - {ids[-1]}


def _split_generated(pairs: list[QAPair], fraction: float, seed: int) -> tuple[list[QAPair], list[QAPair], str]:
    """Held out by whole document: every pair of a document on one side (a model cannot have read the
    answer of a held-out question in training)."""
    held_docs = heldout_documents([p.source or "" for p in pairs], fraction, seed)
    if held_docs or fraction <= 0 or not pairs:
        return ([p for p in pairs if p.source not in held_docs], [p for p in pairs if p.source in held_docs],
                "by_document")
    held = split_heldout(len(pairs), fraction, seed)  # one document cannot be split by document
    return ([p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held],
            "by_pair (only one document)")


def _samples(pairs: list[QAPair], seed: int, per_origin: int = SAMPLES_PER_ORIGIN) -> dict[str, list[dict[str, Any]]]:
    """A seeded handful of pairs of each origin, to be read by a person (answers cut at 300 characters)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for origin in sorted({p.origin or "unknown" for p in pairs}):
        mine = [p for p in pairs if (p.origin or "unknown") == origin]
        picked = random.Random(seed).sample(mine, min(per_origin, len(mine)))
        out[origin] = [{"question": p.question, "answer": p.answer[:300] + ("…" if len(p.answer) > 300 else ""),
                        "source": p.source, "section": p.section} for p in picked]
    return out


def build_qa(paths: list[str | Path], out: str | Path, heldout_fraction: float = 0.1, seed: int = 0,
             max_answer_chars: int | None = 1500, redact_classes: frozenset[str] = DEFAULT_CLASSES,
             generate: GenerateOptions | None = None) -> dict[str, Any]:
    """Collect, clean, deduplicate and split QA pairs; write qa.jsonl, qa.heldout.jsonl, qa.slmforge.json.

    FAQ and QA-file pairs are held out by pair (as before); generated pairs by whole document."""
    start = time.perf_counter()
    gen = generate or GenerateOptions()
    if gen.mode not in GENERATE_MODES:
        raise UserError(f"--generate {gen.mode}: use one of {', '.join(GENERATE_MODES)}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the file to write, e.g. {out / 'qa.jsonl'}")
    if gen.teacher is not None:
        from slmforge.trainer.data.qa.teacher import check_gguf

        check_gguf(Path(gen.teacher))  # before any reading: a wrong path is found at once
    files, _ = collect_files(paths)
    pairs: list[QAPair] = []
    per_file: Counter[str] = Counter()
    for f in files:
        found = read_pairs(f, max_answer_chars)
        per_file[f.source] = len(found)
        pairs.extend(found)
    generated, generated_from, taught = (_generate(files, per_file, gen, seed) if gen.mode != "never"
                                         else ([], [], {"passages": 0, "parsed": 0}))
    if not pairs and not generated:
        raise UserError(f"no question/answer pairs in {len(files)} input file(s); FAQ sections need headings ending "
                        "in '?' (reST or Markdown '## Question?'), or pass a messages/alpaca JSONL file"
                        + ("; --generate never was given, so none were generated" if gen.mode == "never" else
                           "; no section, definition or procedure to generate questions from was found either"))
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
        unique[key] = QAPair(p.question, answer, p.source, p.section, p.origin)
    kept = list(unique.values())
    held = split_heldout(len(kept), heldout_fraction, seed)
    train = [p for i, p in enumerate(kept) if i not in held]
    heldout = [p for i, p in enumerate(kept) if i in held]
    new, gen_counts = _filter_generated(kept, generated, gen, redact_classes, pii)
    gen_train, gen_held, gen_split = _split_generated(new, heldout_fraction, seed)
    train, heldout = train + gen_train, heldout + gen_held
    every = kept + new
    by_file: Counter[str] = Counter(p.source for p in every if p.source)
    stats = {"files_read": len(files), "pairs_found": len(pairs), "duplicate_questions": len(pairs) - len(kept),
             "pairs": len(every), "train_pairs": len(train), "heldout_pairs": len(heldout),
             "pii": {c.upper(): pii.get(c.upper(), 0) for c in CLASSES if c in redact_classes},
             "pairs_by_file": {k: v for k, v in sorted(by_file.items()) if v},
             "origins_by_file": {src: dict(sorted(Counter(p.origin or "unknown" for p in every
                                                          if p.source == src).items()))
                                 for src in sorted(by_file)},
             "pairs_by_origin": dict(sorted(Counter(p.origin or "unknown" for p in every).items())),
             "heldout_by_origin": dict(sorted(Counter(p.origin or "unknown" for p in heldout).items())),
             "generated": {"mode": gen.mode, "documents": len(generated_from), **gen_counts, "kept": len(new),
                           "teacher": taught,
                           "split": gen_split, "heldout_documents": sorted({p.source for p in gen_held if p.source})},
             "samples": _samples(every, seed),
             "files": {"train": str(out), "heldout": str(sibling(out, ".heldout.jsonl")),
                       "manifest": str(sibling(out, ".slmforge.json"))}}
    inputs = [input_ref("documents", p) for p in paths] + ([input_ref("teacher", gen.teacher)] if gen.teacher else [])
    atomic_write_text(out, _jsonl(train))
    heldout_path = sibling(out, ".heldout.jsonl")
    if heldout:
        atomic_write_text(heldout_path, _jsonl(heldout))
    else:  # an empty JSONL is unreadable as training data; a stale one from an earlier run would mislead
        heldout_path.unlink(missing_ok=True)
    manifest = ArtifactManifest(kind="dataset", stage="qa", inputs=inputs, seed=seed,
                                params={"heldout_fraction": heldout_fraction, "max_answer_chars": max_answer_chars,
                                        "redact": sorted(redact_classes), "generate": gen.mode,
                                        "teacher": str(gen.teacher) if gen.teacher else None,
                                        "teacher_limit": gen.teacher_limit,
                                        "near_dup_threshold": gen.near_dup_threshold},
                                metrics={k: v for k, v in stats.items() if k != "files"},
                                summary=f"{len(train)} training Q&A pairs",
                                duration_s=round(time.perf_counter() - start, 3))
    atomic_write_json(sibling(out, ".slmforge.json"), manifest.model_dump(mode="json"))
    return stats
