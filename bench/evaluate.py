"""`slmforge eval`: held-out questions answered by each bundle (with RAG and closed-book), scored, compared.

Every bundle answers exactly the way it answers on a device (``Engine.answer`` with the bundle's
own prompt, index and generation defaults; greedy), so a gain measured here is a gain a user
gets. Per question the answers are scored against the reference (``bench/metrics.py``); the
means are compared with the baseline's over the same questions with a paired bootstrap. Bundles
whose embedders differ are refused: their indexes retrieve differently, so the comparison would
mix retrieval with the model. Runs on the runtime only (no torch).
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.bench.metrics import (
    answer_scores,
    bootstrap_ci,
    citation_judgement,
    groundedness,
    is_refusal,
    mean_of,
    median_of,
    paired_bootstrap,
)
from slmforge.runtime.answer.types import Answer, Answerer
from slmforge.runtime.bundle.reader import Bundle, open_bundle
from slmforge.runtime.telemetry.drift import NULL_PROBES

from slmforge import __version__
from slmforge.datafiles import iter_jsonl
from slmforge.errors import UserError
from slmforge.fileio import sha256_file
from slmforge.qa_records import QARecord, chunk_matches, read_qa
from slmforge.rag_prompt import context_block, passage_label

# Off-domain questions no document collection of a technical product answers (the drift probes'
# first ten); a bundle should say its documents do not cover them. Override with --probes.
DEFAULT_PROBES = NULL_PROBES[:10]
# Compared with the baseline (paired over the questions judged for both), in this order.
COMPARED = ("f1", "rouge_l", "hit_at_k", "citation_accuracy", "groundedness", "closed_book_f1")
# Shares in [0, 1] whose per-system 95 % interval is reported and drawn.
RATES = ("f1", "rouge_l", "hit_at_k", "citation_rate", "citation_accuracy", "groundedness",
         "answer_rate_in_domain", "refusal_rate", "closed_book_f1")


@dataclass
class System:
    name: str
    bundle: Bundle
    baseline: bool = False

    @property
    def key(self) -> Path:
        """Identity of what answers: the same bundle listed twice is answered once."""
        return self.bundle.root.resolve()


@dataclass
class Reply:
    """What eval keeps of one Answer: the text, the chunks the model saw, size and speed."""

    text: str
    generated: str = ""  # the model's own text before the runtime checked its [n] markers ("": the same)
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (source, heading path) as numbered [1..k]
    context: str = ""
    completion_tokens: int = 0
    ttft_ms: float | None = None
    decode_tok_s: float | None = None

    @classmethod
    def of(cls, answer: Answer) -> Reply:
        tok_s = answer.timings.get("decode_tok_s")
        return cls(text=answer.answer, generated=answer.generated_text or "", chunks=[(h.source, h.heading) for h in answer.hits],
                   context=context_block(answer.hits), completion_tokens=int(answer.tokens.get("completion", 0)),
                   ttft_ms=answer.timings.get("ttft_ms"),
                   decode_tok_s=tok_s if tok_s and answer.tokens.get("completion", 0) > 1 else None)


@dataclass
class SystemReplies:
    rag: list[Reply]
    closed_book: list[Reply] | None
    probes: list[Reply]


# -- inputs -----------------------------------------------------------------------------------------------

def unique_names(paths: list[Path]) -> list[str]:
    """Each bundle's folder name (a .tar's stem), with -2, -3 … added where two collide."""
    names: list[str] = []
    for p in paths:
        base = (p.stem if p.suffix == ".tar" else p.resolve().name) or "bundle"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def open_systems(bundles: list[Path], baseline: Path | None) -> list[System]:
    """The baseline first (when given), then the bundles; each verified against its manifest."""
    paths = ([baseline] if baseline else []) + list(bundles)
    names = unique_names(paths)
    systems = []
    for i, (path, name) in enumerate(zip(paths, names)):
        is_base = baseline is not None and i == 0
        try:
            if path.is_file() and not tarfile.is_tarfile(path):  # a .tar error would span lines: say it plainly
                raise UserError(f"{path}: not a bundle (a folder with manifest.json, or a .tar made by "
                                "'slmforge bundle --tar')")
            bundle = open_bundle(path)
        except UserError as exc:
            raise UserError(f"{'--baseline ' if is_base else ''}{exc}") from None
        systems.append(System(name, bundle, baseline=is_base))
    check_same_embedder(systems)
    return systems


def embedder_identity(bundle: Bundle) -> str:
    """The embedder's name and a digest of its files' sha256 (from the bundle's verified manifest)."""
    prefix = bundle.manifest.embedder.path.rstrip("/") + "/"
    entries = sorted(f"{f.path}:{f.sha256}" for f in bundle.manifest.files if f.path.startswith(prefix))
    digest = hashlib.sha256("\n".join(e.split("/", 1)[1] for e in entries).encode()).hexdigest()[:12]
    return f"{bundle.manifest.embedder.name} ({digest})"


def check_same_embedder(systems: list[System]) -> None:
    first = systems[0]
    for other in systems[1:]:
        a, b = embedder_identity(first.bundle), embedder_identity(other.bundle)
        if a != b:
            raise UserError(
                f"{first.bundle.source} and {other.bundle.source} use different embedders ({a} vs {b}): their "
                "indexes retrieve differently, so their answers are not comparable; build both bundles with the "
                "same export embedder (slmforge bundle --index-from BASE-BUNDLE)")


def read_probes(path: Path | None) -> list[str]:
    """Off-domain probe questions: the default set, a text file (one per line, # comments) or JSONL
    ({"question"} or chat "messages")."""
    if path is None:
        return list(DEFAULT_PROBES)
    if not path.is_file():
        raise UserError(f"--probes {path}: file not found; pass a text file with one question per line")
    if path.suffix == ".jsonl":
        questions = []
        for lineno, obj in iter_jsonl(path):
            msgs = obj.get("messages")
            users = [m.get("content") for m in msgs if isinstance(m, dict) and m.get("role") == "user"] \
                if isinstance(msgs, list) else []
            q = obj.get("question") if isinstance(obj.get("question"), str) else (users[-1] if users else None)
            if not isinstance(q, str) or not q.strip():
                raise UserError(f"{path}:{lineno}: a probe needs a \"question\" (or chat \"messages\" with a user turn)")
            questions.append(q.strip())
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"--probes {path}: not UTF-8 text; re-encode it") from None
        questions = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not questions:
        raise UserError(f"--probes {path}: no questions in it; write one off-domain question per line")
    return questions


# -- answering --------------------------------------------------------------------------------------------

def answer_all(engine: Answerer, records: list[QARecord], probes: list[str], k: int, max_tokens: int | None,
               closed_book: bool, tick: Callable[[], None]) -> SystemReplies:
    """Every held-out question with RAG (and closed-book), then every probe with RAG; greedy."""
    def ask(question: str, use_rag: bool) -> Reply:
        reply = Reply.of(engine.answer(question, k=k, use_rag=use_rag, max_tokens=max_tokens,
                                       sampling={"temperature": 0.0}))
        tick()
        return reply

    rag = [ask(r.question, True) for r in records]
    closed = [ask(r.question, False) for r in records] if closed_book else None
    return SystemReplies(rag, closed, [ask(q, True) for q in probes])


# -- scoring ----------------------------------------------------------------------------------------------

def score_rag(ref: QARecord, reply: Reply) -> dict[str, Any]:
    """One RAG answer's metrics (None where the question cannot be judged on that metric)."""
    matches = [chunk_matches(ref, source, heading) for source, heading in reply.chunks] if ref.source else None
    cites, accurate = citation_judgement(reply.text, matches)
    _, accurate_as_generated = citation_judgement(reply.generated or reply.text, matches)
    return {**answer_scores(reply.text, ref.answer),
            "hit_at_k": None if matches is None else any(matches),
            "cites": cites, "citation_accurate": accurate, "citation_accurate_as_generated": accurate_as_generated,
            "groundedness": groundedness(reply.text, reply.context, ref.question),
            "refused": is_refusal(reply.text), "answer_tokens": reply.completion_tokens,
            "ttft_ms": reply.ttft_ms, "decode_tok_s": reply.decode_tok_s}


def per_question(records: list[QARecord], replies: SystemReplies) -> list[dict[str, Any]]:
    rows = []
    for i, ref in enumerate(records):
        row = score_rag(ref, replies.rag[i])
        row["closed_book_f1"] = None if replies.closed_book is None else \
            answer_scores(replies.closed_book[i].text, ref.answer)["f1"]
        rows.append(row)
    return rows


def aggregate(rows: list[dict[str, Any]], probes: list[Reply]) -> tuple[dict[str, Any], dict[str, int]]:
    """(metrics, counts) of one system over its per-question rows and its probe answers."""
    def mean(key: str) -> tuple[float | None, int]:
        return mean_of(r[key] for r in rows)

    metrics: dict[str, Any] = {}
    counts: dict[str, int] = {"questions": len(rows), "probes": len(probes)}
    for key in ("f1", "rouge_l", "hit_at_k", "groundedness", "answer_tokens", "closed_book_f1"):
        metrics[key], _ = mean(key)
    metrics["citation_rate"], _ = mean("cites")
    metrics["citation_accuracy"], counts["citation_judged"] = mean("citation_accurate")
    metrics["citation_accuracy_as_generated"], _ = mean("citation_accurate_as_generated")
    counts["citing"] = sum(bool(r["cites"]) for r in rows)
    counts["no_source"] = sum(r["hit_at_k"] is None for r in rows)
    counts["citing_no_source"] = sum(bool(r["cites"]) and r["hit_at_k"] is None for r in rows)
    refused, _ = mean("refused")
    metrics["answer_rate_in_domain"] = None if refused is None else 1.0 - refused
    metrics["refusal_rate"], _ = mean_of(is_refusal(p.text) for p in probes)
    metrics["ttft_ms"] = median_of(r["ttft_ms"] for r in rows)
    metrics["decode_tok_s"] = median_of(r["decode_tok_s"] for r in rows)
    return {k: _round(v) for k, v in metrics.items()}, counts


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def intervals(rows: list[dict[str, Any]], probes: list[Reply]) -> dict[str, list[float] | None]:
    """95 % bootstrap interval of each rate's mean for one system (None where nothing was judged)."""
    series: dict[str, list[float]] = {
        "citation_rate": [float(r["cites"]) for r in rows],
        "citation_accuracy": [float(r["citation_accurate"]) for r in rows if r["citation_accurate"] is not None],
        "answer_rate_in_domain": [1.0 - float(r["refused"]) for r in rows],
        "refusal_rate": [float(is_refusal(p.text)) for p in probes],
    }
    for key in ("f1", "rouge_l", "hit_at_k", "groundedness", "closed_book_f1"):
        series[key] = [float(r[key]) for r in rows if r[key] is not None]
    out: dict[str, list[float] | None] = {}
    for key in RATES:
        values = series[key]
        out[key] = [_round(v) for v in bootstrap_ci(values)[1:]] if values else None  # type: ignore[misc]
    return out


def compare(name: str, rows: list[dict[str, Any]], base_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each COMPARED metric of ``name`` minus the baseline's, paired over questions judged for both."""
    key_of = {"citation_accuracy": "citation_accurate"}
    out = []
    for metric in COMPARED:
        key = key_of.get(metric, metric)
        pairs = [(float(a[key]), float(b[key])) for a, b in zip(rows, base_rows)
                 if a[key] is not None and b[key] is not None]
        entry: dict[str, Any] = {"system": name, "metric": metric, "n": len(pairs), "delta": None, "ci95": None,
                                 "significant": False}
        if pairs:
            boot = paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs])
            entry.update(delta=boot["mean"], ci95=[boot["ci95_low"], boot["ci95_high"]],
                         significant=boot["significant"])
        out.append(entry)
    return out


# -- the run ----------------------------------------------------------------------------------------------

def describe(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    return {"path": str(bundle.source), "model": m.model.get("path"), "format": m.model.get("format"),
            "quant": m.model.get("quant"), "model_sha256": m.model.get("sha256"), "profile": m.profile,
            "embedder": embedder_identity(bundle), "max_tokens": m.generation.get("max_tokens")}


def answer_rows(records: list[QARecord], probes: list[str], systems: list[System],
                replies: dict[str, SystemReplies], scored: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """answers.jsonl: each question, its reference and every system's answers with their metrics."""
    rows: list[dict[str, Any]] = []
    for i, ref in enumerate(records):
        per_system = {}
        for s in systems:
            r = replies[s.name]
            rag = r.rag[i]
            per_system[s.name] = {
                "rag": {"answer": rag.text, **({"generated": rag.generated} if rag.generated not in ("", rag.text) else {}),
                        "context": [passage_label(src, h) for src, h in rag.chunks], "metrics": scored[s.name][i]},
                **({"closed_book": {"answer": r.closed_book[i].text, "f1": scored[s.name][i]["closed_book_f1"]}}
                   if r.closed_book is not None else {}),
            }
        rows.append({"kind": "heldout", "question": ref.question, "reference": ref.answer, "source": ref.source,
                     "section": ref.section, "systems": per_system})
    for j, q in enumerate(probes):
        rows.append({"kind": "probe", "question": q, "reference": None, "systems": {
            s.name: {"rag": {"answer": replies[s.name].probes[j].text,
                             "refused": is_refusal(replies[s.name].probes[j].text)}} for s in systems}})
    return rows


def run_eval(bundles: list[Path], qa: Path, baseline: Path | None = None, k: int = 4,
             max_tokens: int | None = None, closed_book: bool = True, limit: int | None = None,
             probes_path: Path | None = None, progress: bool = True, threads: int | None = None,
             engine_factory: Callable[[Bundle], Any] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer, score and compare; returns (eval.json content, answers.jsonl rows). Inputs are checked
    before any model loads."""
    from tqdm import tqdm

    started = time.perf_counter()
    records = read_qa(qa)[:limit] if limit else read_qa(qa)
    probes = read_probes(probes_path)
    systems = open_systems(bundles, baseline)
    if engine_factory is None:
        from slmforge.runtime.answer.engine import Engine

        def engine_factory(bundle: Bundle) -> Any:
            return Engine(bundle, threads=threads)
    distinct: dict[Path, System] = {}
    for s in systems:
        distinct.setdefault(s.key, s)
    per_system = len(records) * (2 if closed_book else 1) + len(probes)
    replies: dict[Path, SystemReplies] = {}
    with tqdm(total=per_system * len(distinct), unit="answer", desc="eval", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for s in distinct.values():
            bar.set_postfix_str(s.name)
            with engine_factory(s.bundle) as engine:
                replies[s.key] = answer_all(engine, records, probes, k, max_tokens, closed_book, lambda: bar.update(1))
    by_name = {s.name: replies[s.key] for s in systems}
    scored = {s.name: per_question(records, by_name[s.name]) for s in systems}
    base = next((s for s in systems if s.baseline), None)
    result: dict[str, Any] = {
        "baseline": base.name if base else None,
        "systems": {}, "comparisons": [], "intervals": {}, "counts": {},
        "questions": len(records), "k": k, "max_tokens": max_tokens, "closed_book": closed_book,
        "qa": {"path": str(qa), "sha256": sha256_file(qa), "limit": limit},
        "probes": {"source": str(probes_path) if probes_path else "default", "count": len(probes)},
        "bundles": {s.name: describe(s.bundle) for s in systems},
    }
    for s in systems:
        result["systems"][s.name], result["counts"][s.name] = aggregate(scored[s.name], by_name[s.name].probes)
        result["intervals"][s.name] = intervals(scored[s.name], by_name[s.name].probes)
    if base:
        for s in systems:
            if not s.baseline:
                result["comparisons"] += compare(s.name, scored[s.name], scored[base.name])
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["tool"] = f"slmforge {__version__}"
    return result, answer_rows(records, probes, systems, by_name, scored)
