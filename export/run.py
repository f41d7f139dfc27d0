"""The export stage: checkpoint -> artifacts that fit a profile, measured against the source.

One function so that the CLI, the pipeline and tests drive the same path. Everything is built
inside a temp folder renamed to --out at the end; the quality gate runs before the rename, and
a failed gate still keeps the folder (marked "fail" in export.json) and then exits 3.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.export import fit, onnx_genai, quality, quantize
from slmforge.export.gguf_writer import architecture_of, load_config, write_gguf
from slmforge.export.reuse import PriorExport, link_or_copy, take_artifact

from slmforge.assets import example_docs
from slmforge.errors import QualityGateFailed, UserError
from slmforge.fileio import atomic_dir, atomic_write_json, sha256_path
from slmforge.heldout import load_heldout_texts
from slmforge.manifest import (
    EXPORT_MANIFEST_NAME,
    EmbedderInfo,
    ExportedArtifact,
    ExportManifest,
    input_ref,
    lineage_of,
)
from slmforge.profiles import DeviceProfile

FORMATS = ("gguf", "onnx", "all")
TOOLS = ("gguf", "llama_cpp_python", "onnxruntime", "onnxruntime-genai", "transformers", "torch")


@dataclass
class ExportOptions:
    formats: list[str]
    quant: str | None = None
    heldout: list[Path] | Path | None = None  # read in order until the gate has eval_tokens
    eval_tokens: int = 2048
    window: int = 512
    threads: int | None = None
    embedder: bool = True
    embedder_source: Path | None = None  # a tuned sentence-transformer ('train retriever'); default the embedded one
    progress: bool = True
    reuse: Path | None = None  # an earlier export of the same checkpoint (see export/reuse.py)


@dataclass
class Candidate:
    """One artifact being considered: where it is, what it holds, whether it fits."""

    format: str
    quant: str
    path: Path
    size_bytes: int
    bits_per_weight: float | None
    estimate: fit.Estimate
    extra: dict[str, Any] = field(default_factory=dict)
    prior: ExportedArtifact | None = None  # taken from an earlier export, with its measured gate figures
    gate: dict[str, Any] | None = None  # the quality gate's result, once measured


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


# ---------------------------------------------------------------------------- choosing


def pick(ladder: list[str], nominal_bytes: Callable[[str], int], build: Callable[[str], Candidate],
         discard: Callable[[Candidate], None], config: dict[str, Any], fmt: str,
         profile: DeviceProfile, passes_gate: Callable[[Candidate], bool] | None = None) -> tuple[Candidate, list[str]]:
    """Walk the ladder best-first: skip what cannot fit on nominal size, build the rest and
    keep the first whose measured size fits. Returns the choice and why the others lost.

    With ``passes_gate`` (a profile whose quant_policy is 'footprint') the walk goes smallest-first
    and keeps the first that fits *and* passes the quality gate."""
    rejected: list[str] = []
    tried: list[fit.Estimate] = []  # every estimate that did not fit, nominal or measured
    gate_failed = False
    for quant in (ladder if passes_gate is None else list(reversed(ladder))):
        guess = fit.estimate(fmt, quant, nominal_bytes(quant), config, profile, measured=False)
        if not guess.fits_memory:
            rejected.append(guess.why(profile) + " (nominal size)")
            tried.append(guess)
            continue
        candidate = build(quant)
        if candidate.estimate.fits and (passes_gate is None or passes_gate(candidate)):
            return candidate, rejected
        if candidate.estimate.fits:
            gate_failed = True
            rejected.append(f"{quant}: quality gate {candidate.gate['verdict'] if candidate.gate else 'failed'}")
        else:
            rejected.append(candidate.estimate.why(profile))
            tried.append(candidate.estimate)
        discard(candidate)
    reasons = "; ".join(rejected[-2:])
    if gate_failed:
        raise UserError(f"no {fmt.upper()} quantization of this model both fits profile '{profile.name}' and passes "
                        f"its quality gate: {reasons}; use a profile with quant_policy: quality or a looser quality_gate")
    raise UserError(f"no {fmt.upper()} quantization of this model fits profile '{profile.name}': {reasons}"
                    f"{_shortfall(tried, profile)}; "
                    "make the model smaller ('slmforge compress' then 'slmforge distill') or pick a larger profile")


def _shortfall(tried: list[fit.Estimate], profile: DeviceProfile) -> str:
    """The smallest candidate's shortfall in MB: a built (measured) one when there is one, else a
    nominal size, which is a lower bound (K-quants on rows not a multiple of 256 come out larger)."""
    measured = [e for e in tried if e.measured]
    pool = measured or tried
    if not pool:
        return ""
    smallest = min(pool, key=lambda e: e.memory_bytes)
    if smallest.measured:
        return (f"; the smallest built, {smallest.quant} ({smallest.weights_bytes / fit.MB:.0f} MB file) at est. "
                f"{smallest.memory_bytes / fit.MB:.0f} MB, is {smallest.shortfall_bytes(profile) / fit.MB:.0f} MB short "
                f"of {profile.app_memory_bytes / fit.MB:.0f} MB")
    return (f"; the smallest, {smallest.quant} at est. {smallest.memory_bytes / fit.MB:.0f} MB on its nominal size "
            f"(a lower bound), is at least {smallest.shortfall_bytes(profile) / fit.MB:.0f} MB short of "
            f"{profile.app_memory_bytes / fit.MB:.0f} MB")
def _gguf_candidate(path: Path, quant: str, config: dict[str, Any], profile: DeviceProfile) -> Candidate:
    contents = quantize.inspect_gguf(path)
    est = fit.estimate("gguf", quant, contents.size_bytes, config, profile)
    return Candidate("gguf", quant, path, contents.size_bytes, contents.bits_per_weight, est,
                     {"tensor_types": contents.tensor_types})


def _onnx_candidate(path: Path, quant: str, config: dict[str, Any], profile: DeviceProfile,
                    parameters: int) -> Candidate:
    size = onnx_genai.folder_size(path)
    est = fit.estimate("onnx", quant, size, config, profile)
    return Candidate("onnx", quant, path, size, round(8 * size / parameters, 3), est)


def _discard(candidate: Candidate) -> None:
    import shutil

    if candidate.path.is_dir():
        shutil.rmtree(candidate.path, ignore_errors=True)
    else:
        candidate.path.unlink(missing_ok=True)


def _from_prior(prior: PriorExport | None, fmt: str, quant: str, out: Path,
                make: Callable[[Path], Candidate]) -> Candidate | None:
    """The earlier export's artifact for (fmt, quant) at ``out``, if it has an intact one."""
    art = prior.artifact(fmt, quant) if prior else None
    if art is None or not take_artifact(prior, art, out):
        return None
    candidate = make(out)
    candidate.prior = art
    candidate.extra["reused_from"] = str(prior.folder.resolve())
    return candidate


def export_gguf(checkpoint: Path, tmp: Path, scratch: Path, config: dict[str, Any], profile: DeviceProfile,
                opts: ExportOptions, source_sha: str, prior: PriorExport | None = None,
                passes_gate: Callable[[Candidate], bool] | None = None) -> tuple[Candidate, list[str]]:
    """F16 GGUF first (the quantizer's input, written only when something is built), then the
    chosen (or requested) quantization."""
    f16_target = tmp if opts.quant and opts.quant.upper() == "F16" else scratch

    @functools.cache
    def f16() -> Path:
        return write_gguf(checkpoint, f16_target / "model-F16.gguf", "F16", source_sha, progress=opts.progress).path

    def build(quant: str) -> Candidate:
        out = (f16_target if quant == "F16" else tmp) / f"model-{quant}.gguf"
        reused = _from_prior(prior, "gguf", quant, out, lambda p: _gguf_candidate(p, quant, config, profile))
        if reused is not None:
            return reused
        if quant == "F16":
            return _gguf_candidate(f16(), quant, config, profile)
        if quant in quantize.FLOAT_TYPES:  # straight from the checkpoint, not through F16
            write_gguf(checkpoint, out, quant, source_sha, progress=opts.progress)
            return _gguf_candidate(out, quant, config, profile)
        quantize.quantize_gguf(f16(), out, quant, threads=opts.threads)
        return _gguf_candidate(out, quant, config, profile)

    parameters = _count_parameters(checkpoint)

    def nominal(quant: str) -> int:
        return fit.nominal_weights_bytes(parameters, quantize.NOMINAL_BPW[quant])

    ladder = [quantize.check_quant(opts.quant)] if opts.quant else list(quantize.LADDER)
    return pick(ladder, nominal, build, _discard, config, "gguf", profile, None if opts.quant else passes_gate)


def export_onnx(checkpoint: Path, tmp: Path, config: dict[str, Any], profile: DeviceProfile,
                opts: ExportOptions, parameters: int, prior: PriorExport | None = None,
                passes_gate: Callable[[Candidate], bool] | None = None) -> tuple[Candidate, list[str]]:
    """int8 if it fits, else int4 (fp32 only when asked for: it is the reference, not a target)."""
    def build(precision: str) -> Candidate:
        reused = _from_prior(prior, "onnx", precision, tmp / f"onnx-{precision}",
                             lambda p: _onnx_candidate(p, precision, config, profile, parameters))
        if reused is not None:
            return reused
        out = onnx_genai.build_onnx(checkpoint, tmp / f"onnx-{precision}", precision)
        return _onnx_candidate(out, precision, config, profile, parameters)

    def nominal(precision: str) -> int:
        return fit.nominal_weights_bytes(parameters, {"fp32": 32.0, "int8": 8.5, "int4": 4.5}[precision])

    ladder = [onnx_genai.check_precision(opts.quant)] if opts.quant else ["int8", "int4"]
    return pick(ladder, nominal, build, _discard, config, "onnx", profile, None if opts.quant else passes_gate)


# ---------------------------------------------------------------------------- the stage


def _gate(candidate: Candidate, reference: Callable[[], quality.Reference], profile: DeviceProfile,
          opts: ExportOptions, tokens: int) -> dict[str, Any]:
    if candidate.prior is not None:  # measured by the earlier export on the same text; this profile's bound
        p = candidate.prior
        report = quality.QualityReport(ppl_source=p.ppl_source, ppl_exported=p.ppl_exported, ppl_ratio=p.ppl_ratio,
                                       kl_mean=p.kl_mean, top1_agreement=p.top1_agreement, tokens=tokens)
        passed, verdict = quality.judge(report, candidate.quant, profile.quality_gate, f"profile '{profile.name}'")
        return {"report": report, "passed": passed, "verdict": f"{verdict}; measured by {candidate.extra['reused_from']}"}
    windows = reference().windows

    def logits():
        return quality.artifact_logits(candidate.path, windows, opts.threads, opts.progress)
    report, passed, verdict = quality.evaluate(reference(), logits, candidate.quant, profile.quality_gate,
                                               f"profile '{profile.name}'")
    return {"report": report, "passed": passed, "verdict": verdict}


def _artifact(candidate: Candidate, tmp: Path, gate: dict[str, Any] | None, why: str) -> ExportedArtifact:
    report = gate["report"] if gate else None
    return ExportedArtifact(
        format=candidate.format, quant=candidate.quant, path=candidate.path.relative_to(tmp).as_posix(),
        size_bytes=candidate.size_bytes, sha256=sha256_path(candidate.path),
        bits_per_weight=candidate.bits_per_weight, est_memory_bytes=candidate.estimate.memory_bytes,
        est_decode_tok_s=candidate.estimate.decode_tok_s,
        ppl_source=report.ppl_source if report else None, ppl_exported=report.ppl_exported if report else None,
        ppl_ratio=round(report.ppl_ratio, 5) if report else None, kl_mean=round(report.kl_mean, 6) if report else None,
        top1_agreement=round(report.top1_agreement, 5) if report else None,
        gate="skipped" if gate is None else ("pass" if gate["passed"] else "fail"),
        reason=why + (f"; quality gate: {gate['verdict']}" if gate else ""),
        estimate=candidate.estimate.as_dict(), **candidate.extra,
    )


def heldout_texts(opts: ExportOptions) -> tuple[list[str], dict[str, Any]]:
    """The gate's texts, every ``--heldout`` source in order (the gate reads them until it has
    ``eval_tokens``), and the key an earlier export must match to be reused.

    A held-out split can be tiny (the FAQ recipe's is 447 tokens: a ratio on so few tokens moves by
    several per cent at equal KL), so the pipeline names the recipe's documents after it: the gate
    compares the export with its own source, which needs domain text, not text the model never saw.
    """
    paths = opts.heldout if isinstance(opts.heldout, list) else [opts.heldout] if opts.heldout else []
    paths = paths or [example_docs()]
    texts = [t for p in paths for t in load_heldout_texts(p)]
    shas = [sha256_path(p) for p in paths]
    key = {"path": " + ".join(str(Path(p).resolve()) for p in paths),
           "sha256": shas[0] if len(shas) == 1 else hashlib.sha256(" ".join(shas).encode()).hexdigest(),
           "window": opts.window, "eval_tokens": opts.eval_tokens}
    return texts, key


def run_export(model: Path, profile: DeviceProfile, out: Path, opts: ExportOptions) -> ExportManifest:
    """Build the export folder at ``out``; raises QualityGateFailed (exit 3) after writing it
    when an artifact failed its gate, UserError (exit 2) when nothing fits or input is bad."""
    started = time.perf_counter()
    model, out = Path(model), Path(out)
    config = load_config(model)
    if "gguf" in opts.formats:
        architecture_of(config, model)
    for fmt in opts.formats:
        if fmt not in profile.formats:
            raise UserError(f"profile '{profile.name}' does not run {fmt} (it lists {', '.join(profile.formats)}); "
                            "choose --format accordingly")
    if opts.quant:
        if len(opts.formats) > 1:
            raise UserError("--quant names one format's quantization; use it with --format gguf or --format onnx")
        (quantize.check_quant if opts.formats[0] == "gguf" else onnx_genai.check_precision)(opts.quant)
    texts, heldout_key = heldout_texts(opts)
    source = input_ref("source", model)
    earlier = PriorExport.open(opts.reuse) if opts.reuse else None
    # Models are this export's only for the same checkpoint and gate; the embedder depends on neither.
    prior = earlier if earlier is not None and earlier.matches(source.sha256, heldout_key) else None
    artifacts: list[ExportedArtifact] = []
    failed: list[str] = []
    with atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix=".f16-", dir=tmp.parent) as scratch:
        parameters = None
        chosen: list[tuple[Candidate, list[str]]] = []
        windows = quality.token_windows(model, texts, opts.window, opts.eval_tokens)
        tokens = sum(len(w) for w in windows)

        @functools.cache
        def reference() -> quality.Reference:  # the source's logits: only when an artifact is new
            return quality.source_reference(model, windows, progress=opts.progress)

        def gate_of(candidate: Candidate) -> dict[str, Any]:
            if candidate.gate is None:
                candidate.gate = _gate(candidate, reference, profile, opts, tokens)
            return candidate.gate

        footprint = profile.quant_policy == "footprint"
        passes_gate = (lambda c: bool(gate_of(c)["passed"])) if footprint else None
        if "gguf" in opts.formats:
            chosen.append(export_gguf(model, tmp, Path(scratch), config, profile, opts, source.sha256, prior,
                                      passes_gate))
            parameters = quantize.inspect_gguf(chosen[-1][0].path).parameters
        if "onnx" in opts.formats:
            if parameters is None:
                parameters = _count_parameters(model)
            chosen.append(export_onnx(model, tmp, config, profile, opts, parameters, prior, passes_gate))
        policy = ("smallest that fits and passes the quality gate (quant_policy: footprint); " if footprint
                  else "highest quality that fits; ")
        for candidate, rejected in chosen:
            why = ("requested with --quant; " if opts.quant else policy) + candidate.estimate.why(profile) + \
                (f"; {'smaller' if footprint else 'better'} ones rejected: {' | '.join(rejected)}" if rejected else "")
            gate = gate_of(candidate)
            artifacts.append(_artifact(candidate, tmp, gate, why))
            if not gate["passed"]:
                failed.append(f"{candidate.format} {candidate.quant}: {gate['verdict']}")
        embedder = None
        if opts.embedder:
            from slmforge.export.embedder import export_embedder

            embedder = (_prior_embedder(earlier, tmp, opts.embedder_source)
                        or export_embedder(tmp / "embedder", source=opts.embedder_source))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        manifest = ExportManifest(
            profile=profile.name, source=source, lineage=lineage_of(model),
            chat_template=tokenizer.chat_template, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
            artifacts=artifacts, embedder=embedder, tool_versions=tool_versions(),
            duration_s=round(time.perf_counter() - started, 1), summary=export_summary(artifacts),
            heldout={**heldout_key, "tokens": sum(len(w) for w in windows)},
        )
        atomic_write_json(tmp / EXPORT_MANIFEST_NAME, manifest.model_dump(mode="json"))
    if failed:
        raise QualityGateFailed(f"{out}: quality gate failed ({'; '.join(failed)}); the artifact is kept and marked "
                                "'fail' in export.json — choose a higher --quant or a profile with a looser bound")
    return manifest


def export_summary(artifacts: list[ExportedArtifact]) -> str | None:
    """The manifest's one line: each chosen file's quant, size and perplexity ratio (and its gate unless passed)."""
    parts = []
    for a in artifacts:
        parts.append(f"{a.quant} {a.size_bytes / 1e6:.0f} MB" + (f" ppl×{a.ppl_ratio:.3f}" if a.ppl_ratio else "")
                     + (f" gate {a.gate}" if a.gate != "pass" else ""))
    return ", ".join(parts) or None


def _prior_embedder(prior: PriorExport | None, tmp: Path, source: Path | None) -> EmbedderInfo | None:
    """The earlier export's device embedder, when it was exported from the same encoder."""
    from slmforge.export.embedder import embedded_embedder, with_fusion
    from slmforge.runtime.index.embedder import EMBEDDER_CONFIG

    info = prior.embedder() if prior else None
    if info is None or info.quant != "int8":
        return None
    src = prior.folder / info.path
    config = json.loads((src / EMBEDDER_CONFIG).read_text())
    if config.get("source_sha256") != sha256_path(source or embedded_embedder()):
        return None
    link_or_copy(src, tmp / "embedder")
    # the weights match, but the BM25 weight is the checkpoint's record now (the earlier export may predate it)
    return with_fusion(tmp / "embedder", source or embedded_embedder()).model_copy(update={"path": "embedder"})


def _count_parameters(model: Path) -> int:
    """Parameter count from the safetensors headers (no weights loaded)."""
    import math

    from safetensors import safe_open
    from slmforge.export.gguf_writer import safetensor_files

    total = 0
    for file in safetensor_files(model):
        with safe_open(str(file), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())  # noqa: SIM118
    return total
