"""Measure one bundle (or bare model) in a fresh process, so load time and peak RSS are its own.

``bench run`` starts ``python -m slmforge.bench.run_bundle JOB.json RESULT.json`` per bundle and
thread count; a crash in a native library fails that bundle's record, not the whole run.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmforge.bench import measure, quality
from slmforge.bench.records import BundleInfo, Metric, measured, unknown
from slmforge.runtime.answer.types import Answerer

from slmforge.errors import UserError
from slmforge.heldout import load_heldout_texts

DEFAULT_QUESTION = "How do I copy a file in Python?"
_QUANT = re.compile(r"(?i)(?<![A-Z0-9])(F16|BF16|F32|IQ\d_[A-Z]+|Q\d_K(?:_[SML])?|Q\d_\d|int4|int8|fp16|fp32)(?![A-Z0-9])")


@dataclass
class BundleJob:
    """Everything a worker needs; written as JSON for the child process."""

    path: str
    threads: int
    repeats: int
    bandwidth_gbs: float
    app_memory_gb: float
    bandwidth_note: str = "numpy copy test"
    k: int = 4
    question: str = DEFAULT_QUESTION
    rag_max_tokens: int = 32
    heldout: str | None = None
    ppl_tokens: int = 2048
    qa: str | None = None
    qa_limit: int = 10
    qa_max_tokens: int = 96
    quality: bool = True


@dataclass
class BundleResult:
    bundle: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    weight_bytes: int | None = None
    threads: int = 0


GATE_FIELDS = ("gate", "ppl_ratio", "kl_mean", "top1_agreement")  # from the bundle manifest's model entry


def describe(path: Path, bundle: Any | None) -> BundleInfo:
    """Name, format, quant, size and hash of the model, from the bundle manifest (or the file name)."""
    if bundle is not None:
        model = bundle.manifest.model
        model_path = bundle.model_path
        entry = next((f for f in bundle.manifest.files if f.path == model["path"]), None)
        fmt, quant, sha = model.get("format", "?"), str(model.get("quant", "?")), entry.sha256 if entry else None
        built_for = bundle.manifest.profile
        base_model = model.get("base_model")
        gate = {k: model.get(k) for k in GATE_FIELDS if model.get(k) is not None} or None
    else:
        model_path = path
        fmt = "gguf" if path.suffix == ".gguf" else "onnx"
        found = _QUANT.search(path.name)
        quant, sha, built_for = (found.group(1) if found else "unknown"), None, None
        base_model, gate = None, None
    size = (model_path.stat().st_size if model_path.is_file()
            else sum(p.stat().st_size for p in model_path.rglob("*") if p.is_file()))
    return BundleInfo(path=str(path.resolve()), name=path.name, format=fmt, quant=quant, model_bytes=size,
                      model_sha256=sha, built_for_profile=built_for,
                      base_model=str(base_model) if base_model else None, gate=gate)


class _Steps:
    """Runs measurement steps; a failing step becomes ``failed`` metrics and an error line, not a crash."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self.errors: list[str] = []

    def run(self, names: dict[str, str], fn: Callable[[], dict[str, Metric]]) -> None:
        try:
            self.metrics.update(fn())
        except Exception as exc:  # noqa: BLE001 - one broken step must not lose the other numbers
            message = f"{exc.__class__.__name__}: {exc}"
            self.errors.append(f"{', '.join(names)}: {message}")
            for name, unit in names.items():
                self.metrics.setdefault(name, unknown(unit, message[:300], "failed"))


def _rag_ttft(engine: Answerer, probe: Any, job: BundleJob) -> dict[str, Metric]:
    """Time to first token of a RAG answer, cold each time (llama.cpp's prompt-prefix reuse is cleared)."""
    ttfts, decode = [], []
    for _ in range(max(1, min(job.repeats, 3))):
        reset = getattr(getattr(probe, "llm", None), "reset", None)
        if reset:
            reset()
        stream = engine.answer_stream(job.question, k=job.k, max_tokens=job.rag_max_tokens,
                                      sampling={"temperature": 0.0, "seed": 0})
        ttft, _ = measure.time_to_first_delta(stream)
        ttfts.append(ttft)
        decode.append(stream.result.timings["decode_tok_s"])
    note = f"k={job.k}, embed + search + prompt fit + prefill of {stream.result.tokens['prompt']} tokens"
    sd = statistics.stdev(ttfts) if len(ttfts) > 1 else 0.0
    dsd = statistics.stdev(decode) if len(decode) > 1 else 0.0
    return {"rag_ttft_ms": measured(statistics.fmean(ttfts), "ms", std=sd, n=len(ttfts), note=note),
            "rag_decode_tok_s": measured(statistics.fmean(decode), "tok/s", std=dsd, n=len(decode),
                                         note="our generation loop, after the first token")}


def measure_bundle(job: BundleJob) -> BundleResult:
    """All metrics of one bundle at ``job.threads`` threads, in this process."""
    from slmforge.runtime.generate.backend import load_backend

    path = Path(job.path)
    steps = _Steps()
    start = time.perf_counter()
    engine, bundle = None, None
    if (path / "manifest.json").is_file() or path.suffix == ".tar":
        from slmforge.runtime.answer.engine import Engine
        from slmforge.runtime.bundle.reader import open_bundle

        bundle = open_bundle(path)
        engine = Engine(bundle, threads=job.threads)
        backend = engine.backend
    else:
        backend = load_backend(path, threads=job.threads)
    steps.metrics["load_ms"] = measured((time.perf_counter() - start) * 1000, "ms",
                                        note="open + sha256 verify + load model, embedder and index" if bundle
                                        else "load model")
    info = describe(path, bundle)
    probe = measure.probe_for(backend)
    label = f"{info.name} t={job.threads}"
    steps.run({"pp512_tok_s": "tok/s", "tg128_tok_s": "tok/s"}, lambda: measure.speed(probe, job.repeats, label))
    meter = measure.EnergyMeter()
    tg = measure.random_tokens(probe.vocab_size, measure.TG_TOKENS, seed=3)
    steps.run({"energy_j_per_token": "J/token"}, lambda: {"energy_j_per_token": measure.energy_per_token(
        meter, lambda: (probe.decode(tg), len(tg))[1] if meter.source else 0)})
    latencies: list[float] = []
    if engine is not None:
        steps.run({"rag_ttft_ms": "ms", "rag_decode_tok_s": "tok/s"}, lambda: _rag_ttft(engine, probe, job))

        def faq() -> dict[str, Metric]:
            found, lat = quality.faq_retrieval(engine, job.k)
            latencies.extend(lat)
            return found

        steps.run({"faq_hit_at_k": "ratio"}, faq)
        steps.run({"retrieval_p50_ms": "ms", "retrieval_p95_ms": "ms"},
                  lambda: measure.percentile_metrics(latencies, "retrieval"))
    else:
        why = "a bare model, not a bundle: no index to retrieve from"
        for name, unit in (("rag_ttft_ms", "ms"), ("rag_decode_tok_s", "tok/s"), ("faq_hit_at_k", "ratio"),
                           ("retrieval_p50_ms", "ms"), ("retrieval_p95_ms", "ms"), ("qa_token_f1", "F1")):
            steps.metrics[name] = unknown(unit, why, "skipped")
    steps.metrics.update(measure.memory_metrics(measure.peak_rss_bytes(), job.app_memory_gb))
    steps.metrics["memory_bandwidth_gbs"] = measured(job.bandwidth_gbs, "GB/s", note=job.bandwidth_note)
    steps.metrics.update(measure.ceiling_metrics(probe.weight_bytes, job.bandwidth_gbs,
                                                 steps.metrics.get("tg128_tok_s")))
    if job.quality:
        _quality(job, backend, engine, steps)
    backend.close()
    return BundleResult(bundle=info.model_dump(mode="json"),
                        metrics={k: m.model_dump(mode="json") for k, m in steps.metrics.items()},
                        errors=steps.errors, weight_bytes=probe.weight_bytes, threads=job.threads)


def _quality(job: BundleJob, backend: Any, engine: Any, steps: _Steps) -> None:
    if job.heldout:
        texts = load_heldout_texts(job.heldout)
        steps.run({"perplexity": "ppl"}, lambda: {"perplexity": quality.perplexity(backend, texts, job.ppl_tokens)})
    else:
        steps.metrics["perplexity"] = unknown("ppl", "no --heldout text given", "skipped")
    if engine is None:
        return
    if job.qa:
        qa_file = job.qa
        steps.run({"qa_token_f1": "F1"}, lambda: {"qa_token_f1": quality.qa_f1(
            engine, quality.load_qa(qa_file)[: job.qa_limit], job.k, job.qa_max_tokens)})
    else:
        steps.metrics["qa_token_f1"] = unknown("F1", "no --qa file given", "skipped")


def run_in_subprocess(job: BundleJob, timeout: float | None = None) -> BundleResult:
    """Run ``measure_bundle`` in a child process; its progress bars go to our stderr."""
    with tempfile.TemporaryDirectory(prefix="slmforge-bench-") as tmp:
        spec, out = Path(tmp, "job.json"), Path(tmp, "result.json")
        spec.write_text(json.dumps(asdict(job)))
        proc = subprocess.run([sys.executable, "-m", "slmforge.bench.run_bundle", str(spec), str(out)],
                              stdout=sys.stderr, timeout=timeout, check=False)
        if out.is_file():
            return BundleResult(**json.loads(out.read_text()))
        return _failed(job, f"the bench worker exited with code {proc.returncode} before writing a result")


def _main(spec: str, out: str) -> int:
    job = BundleJob(**json.loads(Path(spec).read_text()))
    try:
        result = measure_bundle(job)
    except UserError as exc:
        result = _failed(job, str(exc))
    except Exception as exc:  # noqa: BLE001 - reported in the record, with the traceback on stderr
        traceback.print_exc()
        result = _failed(job, f"{exc.__class__.__name__}: {exc}")
    Path(out).write_text(json.dumps(asdict(result)))
    return 0


def _failed(job: BundleJob, message: str) -> BundleResult:
    path = Path(job.path)
    return BundleResult(bundle=BundleInfo(path=str(path.resolve()), name=path.name, format="?", quant="?",
                                          model_bytes=0).model_dump(mode="json"),
                        metrics={}, errors=[message], threads=job.threads)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
