"""RAG-aware SFT examples rendered in the runtime's own prompt (``slmforge data rag``).

A small model that was only ever tuned on bare questions does not learn to read the
"Context: [1] … [k]" block it is given on the device, to ignore the passages that do not
answer, or to cite. Following RAFT, each QA pair is rendered exactly as the bundle will
ask it (same system prompt, same retriever, same context block, same token budget): the
passage that holds the answer among the other retrieved ones, the reference answer
followed by its ``[n]``, and for a share of questions no answering passage at all and the
answer that the documents do not cover it. Those passages are retrieved for the question from
every other section, or (``unanswerable_from="other-documents"``) from other documents only: the
neighbouring sections of its own page half-answer it, and a model taught to refuse beside them
refuses answerable questions. Which one helps depends on how long the model trains
(docs/evaluation.md: other documents at 120 steps on the whole excerpt, F1 +0.26; at 30 steps on
the pages without FAQ, −0.08), so it is a choice, measured per recipe. Generated questions whose
own passage the retriever cannot find are dropped: the model would be taught to answer from nothing.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.runtime.answer.context_budget import plan_prompt
from slmforge.runtime.answer.engine import Engine
from slmforge.runtime.bundle.reader import open_bundle
from slmforge.runtime.index.store import Hit

from slmforge.answer_words import groundedness
from slmforge.datafiles import jsonl_text
from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, atomic_write_text, sibling
from slmforge.manifest import ArtifactManifest, input_ref
from slmforge.qa_records import QARecord, chunk_matches, read_qa
from slmforge.rag_prompt import NOT_IN_DOCUMENTS, UNANSWERABLE_FROM

# Origins whose pairs a person wrote (FAQ sections, QA files): kept even when retrieval misses their passage.
AUTHORED = ("faq", "file", None)
EXTRA_CANDIDATES = 8  # retrieved beyond k, to find the answering passage or distractors to replace it with
# From other documents only (``UNANSWERABLE_FROM``), more are retrieved to find k passages.
UNANSWERABLE_CANDIDATES = 24
# A passage holding at least this share of the answer's content words (beyond the question's) answers it: it is
# never a distractor of an "unanswerable" example (``answers_anyway``).
ANSWERING_SHARE = 0.5


@dataclass(frozen=True)
class RagOptions:
    k: int = 4
    seq_len: int = 1024
    unanswerable_share: float = 0.15
    seed: int = 0
    unanswerable_from: str = UNANSWERABLE_FROM[0]


class ExampleBuilder:
    """Renders QA records through one bundle's retriever, prompt and token budget."""

    def __init__(self, engine: Engine, opts: RagOptions) -> None:
        self.engine, self.opts = engine, opts
        rows = engine.index.conn.execute("SELECT chunk_id, source, heading, text FROM chunks ORDER BY chunk_id")
        self._chunks = [Hit(chunk_id=r[0], source=r[1], heading=r[2], text=r[3], score=0.0, vec_score=None,
                            bm25_rank=None) for r in rows]

    def candidates(self, question: str, extra: int = EXTRA_CANDIDATES) -> list[Hit]:
        return self.engine.retrieve(question, self.opts.k + extra)[0]

    def placed_passage(self, ref: QARecord) -> Hit | None:
        """The first chunk of the reference's section (where its answer starts), when retrieval missed it."""
        return next((c for c in self._chunks if chunk_matches(ref, c.source, c.heading)), None)

    def render(self, ref: QARecord, chunks: list[Hit], answer: str, gold_id: int | None) -> tuple[dict, bool]:
        """The chat example within the token budget; False when the answering passage did not fit."""
        backend = self.engine.backend
        answer_tokens = len(backend.tokenize(answer)) + 8  # the [n], the end-of-turn marker and some slack
        plan = plan_prompt(ref.question, chunks, [], self.engine.system_prompt, backend.render_chat,
                           lambda text: len(backend.tokenize(text)), self.opts.seq_len, answer_tokens)
        kept = [h.chunk_id for h in plan.hits]
        if gold_id is not None and gold_id not in kept:
            return {}, False
        if gold_id is not None:
            answer = f"{answer} [{kept.index(gold_id) + 1}]"
        example = {"messages": [*plan.messages, {"role": "assistant", "content": answer}],
                   "source": ref.source, "section": ref.section, "origin": ref.origin,
                   "answerable": gold_id is not None}
        return example, True

    def example(self, ref: QARecord, rng: random.Random) -> tuple[dict | None, str]:
        """One example for ``ref`` and what happened to it (a stats key)."""
        k = self.opts.k
        found = self.candidates(ref.question)
        gold = [h for h in found if chunk_matches(ref, h.source, h.heading)]
        retrieved = any(chunk_matches(ref, h.source, h.heading) for h in found[:k])
        if not retrieved and ref.origin not in AUTHORED:
            return None, "dropped_not_retrieved"
        if ref.source and rng.random() < self.opts.unanswerable_share:
            if self.opts.unanswerable_from == "other-documents":
                others = [h for h in self.candidates(ref.question, UNANSWERABLE_CANDIDATES) if h.source != ref.source]
            else:
                others = [h for h in found if h.source != ref.source or not chunk_matches(ref, h.source, h.heading)]
            distractors = [h for h in others if not answers_anyway(ref, h)]
            if not distractors:
                return None, "dropped_every_passage_answers"
            example, _ = self.render(ref, distractors[:k], NOT_IN_DOCUMENTS, None)
            return example, ("unanswerable" if len(distractors) == len(others) else "unanswerable_answering_dropped")
        passage = gold[0] if gold else self.placed_passage(ref)
        if passage is None:
            return None, "dropped_no_passage"
        chunks = found[:k]
        if passage.chunk_id not in {h.chunk_id for h in chunks}:  # put it where retrieval might have: any rank
            chunks = [h for h in chunks if not chunk_matches(ref, h.source, h.heading)][: k - 1]
            chunks.insert(rng.randrange(len(chunks) + 1), passage)
        example, fits = self.render(ref, chunks, ref.answer, passage.chunk_id)
        if not fits:  # a long question and passages: keep the answering one, drop distractors from the bottom
            chunks = [passage]
            example, fits = self.render(ref, chunks, ref.answer, passage.chunk_id)
        if not fits:
            return None, "dropped_too_long"
        return example, ("answerable" if retrieved else "answerable_placed")


def answers_anyway(ref: QARecord, chunk: Hit) -> bool:
    """Does this passage hold the reference answer although it is not the answer's own section?

    Near-duplicate sections (a FAQ entry and the library page it paraphrases; neighbouring built-ins that
    share their description) answer the question too. Put in a context labelled "the documents do not
    cover this", such a passage teaches the model to refuse answerable questions: at 120 SFT steps it
    refused 31 of 65 answerable held-out questions, and 15 % of the unanswerable training contexts held
    60 % or more of their answer's words (docs/evaluation.md)."""
    share = groundedness(ref.answer, chunk.text, ref.question)
    return share is not None and share >= ANSWERING_SHARE


def retrievable(builder: ExampleBuilder, records: list[QARecord]) -> tuple[list[QARecord], int]:
    """Held-out questions worth asking: authored ones all, generated ones only when retrieval finds their passage."""
    kept = [r for r in records if r.origin in AUTHORED
            or any(chunk_matches(r, h.source, h.heading) for h in builder.candidates(r.question)[: builder.opts.k])]
    return kept, len(records) - len(kept)


def rag_summary(stats: dict[str, Any]) -> str:
    """The manifest's one line: how many examples, and how many questions the retriever could not serve."""
    unanswerable = stats.get("unanswerable", 0) + stats.get("unanswerable_answering_dropped", 0)
    return (f"{stats.get('examples', 0)} RAG examples ({unanswerable} unanswerable, "
            f"{stats.get('unanswerable_answering_dropped', 0)} of them with an answering passage kept out, "
            f"{stats.get('dropped_not_retrieved', 0)} generated questions dropped: passage not retrieved)")


def build_rag_examples(bundle_path: Path, qa_path: Path, out: Path, opts: RagOptions,
                       heldout: Path | None = None, heldout_out: Path | None = None) -> dict[str, Any]:
    """Write RAG-aware SFT examples (``out``), optionally the filtered held-out questions, and a manifest."""
    start = time.perf_counter()
    if opts.k < 1:
        raise UserError(f"--k must be at least 1, not {opts.k}")
    if opts.unanswerable_from not in UNANSWERABLE_FROM:
        raise UserError(f"--unanswerable-from {opts.unanswerable_from!r}: use one of {', '.join(UNANSWERABLE_FROM)}")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name the file to write, e.g. {out / 'sft.jsonl'}")
    if (heldout is None) != (heldout_out is None):
        raise UserError("--heldout and --heldout-out go together: the questions to filter and where to write them")
    records = read_qa(qa_path)
    held_records = read_qa(heldout) if heldout else []
    rng = random.Random(opts.seed)
    outcome: Counter[str] = Counter()
    examples: list[dict] = []
    with Engine(open_bundle(bundle_path), n_ctx=opts.seq_len) as engine:
        builder = ExampleBuilder(engine, opts)
        from tqdm import tqdm

        for ref in tqdm(records, desc="rag examples", unit="q", leave=False):
            example, what = builder.example(ref, rng)
            outcome[what] += 1
            if example:
                examples.append(example)
        kept_heldout, dropped_heldout = retrievable(builder, held_records) if held_records else ([], 0)
    if not examples:
        raise UserError(f"{qa_path}: no example could be rendered ({dict(outcome)}); the documents in the bundle's "
                        "index must be the ones the questions were made from")
    stats: dict[str, Any] = {"records": len(records), "examples": len(examples), **dict(sorted(outcome.items())),
                             "by_origin": dict(Counter(str(e.get("origin")) for e in examples))}
    atomic_write_text(out, jsonl_text(examples))
    if heldout_out is not None:
        stats.update(heldout_records=len(held_records), heldout_kept=len(kept_heldout),
                     heldout_dropped_not_retrieved=dropped_heldout)
        atomic_write_text(heldout_out, jsonl_text([r.record() for r in kept_heldout]))
    inputs = [input_ref("qa", qa_path), input_ref("bundle", bundle_path / "manifest.json")]
    if heldout:
        inputs.append(input_ref("heldout", heldout))
    manifest = ArtifactManifest(kind="dataset", stage="rag", inputs=inputs, seed=opts.seed,
                                params={"k": opts.k, "seq_len": opts.seq_len,
                                        "unanswerable_share": opts.unanswerable_share,
                                        "unanswerable_from": opts.unanswerable_from},
                                metrics=stats, summary=rag_summary(stats), duration_s=round(time.perf_counter() - start, 3))
    atomic_write_json(sibling(out, ".slmforge.json"), manifest.model_dump(mode="json"))
    return stats
