"""`bench report`: many results.jsonl (many devices, runs, schema versions) → report.md, report.json, PNGs.

Records are read tolerantly: a record of another schema version, or one missing fields, still
contributes what it has; every gap is shown ("—", with the reason listed) instead of dropped.
The report opens with a summary (bench/summary.py): one row per device and model file. Projections
stand in their own columns and tables, and are drawn hatched in plots.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.bench.models import models_json, models_markdown, pick, plot_models
from slmforge.bench.records import METRICS, SCHEMA_VERSION, LoadedRecord, Metric, fmt, read_records
from slmforge.bench.summary import (
    EVAL_FIGURES,
    FileGroup,
    attach_eval,
    collapse,
    read_eval,
    summary_json,
    summary_markdown,
)

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_json, atomic_write_text

MODELS_PNG = "models_by_profile.png"

# Detail tables of records measured on a device; projections for emulated profiles get their own table.
TABLES: dict[str, tuple[str, ...]] = {
    "Speed": ("pp512_tok_s", "tg128_tok_s", "rag_ttft_ms", "rag_decode_tok_s", "load_ms"),
    "Bandwidth ceiling": ("memory_bandwidth_gbs", "bytes_per_token_mb", "decode_ceiling_tok_s",
                          "decode_share_of_ceiling"),
    "Memory against the device budget": ("peak_rss_mb", "app_memory_mb", "rss_share_of_budget"),
    "Retrieval and energy": ("retrieval_p50_ms", "retrieval_p95_ms", "energy_j_per_token"),
    "Quality": ("perplexity", "faq_hit_at_k", "qa_token_f1"),
}
PROJECTED_TABLE = ("tg128_projected_tok_s", "decode_ceiling_tok_s", "bytes_per_token_mb", "peak_rss_mb",
                   "app_memory_mb", "rss_share_of_budget")
SHORT = {"pp512_tok_s": "pp512 tok/s", "tg128_tok_s": "tg128 tok/s", "tg128_projected_tok_s": "tg128 projected",
         "rag_ttft_ms": "RAG TTFT ms", "rag_decode_tok_s": "RAG decode tok/s", "load_ms": "load ms",
         "memory_bandwidth_gbs": "bandwidth GB/s", "bytes_per_token_mb": "MB read/token",
         "decode_ceiling_tok_s": "ceiling tok/s", "decode_share_of_ceiling": "tg128 / ceiling",
         "peak_rss_mb": "peak RSS MB", "app_memory_mb": "budget MB", "rss_share_of_budget": "RSS / budget",
         "retrieval_p50_ms": "retrieval p50 ms", "retrieval_p95_ms": "retrieval p95 ms",
         "energy_j_per_token": "J/token", "perplexity": "perplexity", "faq_hit_at_k": "FAQ hit@k",
         "qa_token_f1": "QA token F1"}


@dataclass
class Row:
    """One record flattened for tables and plots; ``gaps`` say what is missing and why."""

    device: str
    bundle: str
    fmt_quant: str
    mode: str
    threads: Any
    metrics: dict[str, Metric | None]
    source: str
    valid: bool
    gaps: list[str]
    sha256: str | None = None  # of the model file: bundles that share it are one row in the summary
    base_model: str | None = None  # the bundle's imported base model (bench/models.py sets models side by side)
    built_for: str | None = None  # the profile the bundle was exported for
    model_bytes: int | None = None
    gate: dict[str, Any] | None = None  # export's quality gate on the file

    @property
    def key(self) -> str:
        return f"{self.device} | {self.bundle}"


def _metric(raw: Any, valid: bool) -> Metric | None:
    """A metric from a record of any schema: our Metric dict, or a bare number (shown as unverified)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return Metric(value=float(raw), unit="", status="measured", note="bare number from another schema")
    if isinstance(raw, dict):
        try:
            return Metric.model_validate(raw)
        except ValueError:
            value = raw.get("value")
            if isinstance(value, (int, float)):
                return Metric(value=float(value), unit=str(raw.get("unit", "")), status="measured",
                              note="unverified: did not match the metric schema")
    return None


def to_row(rec: LoadedRecord) -> Row:
    raw = rec.raw
    profile = raw.get("profile") if isinstance(raw.get("profile"), dict) else {}
    bundle = raw.get("bundle") if isinstance(raw.get("bundle"), dict) else {}
    mode = str(raw.get("mode", "measured"))
    device = str(profile.get("name") or (raw.get("device") or {}).get("hostname") or "unknown device")
    if mode == "emulated":
        device += " (emulated)"
    gaps = [f"{rec.source}: {p}" for p in rec.problems]
    metrics: dict[str, Metric | None] = {}
    raw_metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}
    for name in METRICS:
        metrics[name] = _metric(raw_metrics.get(name), rec.valid)
    missing = [n for n in METRICS if n not in raw_metrics]
    if missing and not rec.valid:  # a current-schema record leaves out only what its mode never has
        gaps.append(f"{rec.source}: fields missing from the record: {', '.join(missing)}")
    gaps += [f"{rec.source}: error: {e}" for e in raw.get("errors", []) if isinstance(e, str)]
    gaps += [f"{rec.source}: note: {n}" for n in raw.get("notes", []) if isinstance(n, str)]
    return Row(device=device, bundle=str(bundle.get("name", "unknown bundle")),
               fmt_quant=f"{bundle.get('format', '?')} {bundle.get('quant', '?')}", mode=mode,
               threads=raw.get("threads", "?"), metrics=metrics, source=rec.source, valid=rec.valid, gaps=gaps,
               sha256=str(bundle["model_sha256"]) if bundle.get("model_sha256") else None,
               base_model=str(bundle["base_model"]) if bundle.get("base_model") else None,
               built_for=str(bundle["built_for_profile"]) if bundle.get("built_for_profile") else None,
               model_bytes=bundle["model_bytes"] if isinstance(bundle.get("model_bytes"), int) else None,
               gate=bundle["gate"] if isinstance(bundle.get("gate"), dict) else None)


def _cell(row: Row, name: str) -> str:
    text = fmt(row.metrics.get(name))
    return text if row.valid or text == "—" else f"{text}†"


def markdown_table(rows: list[Row], names: tuple[str, ...]) -> str:
    shown = [n for n in names if any(r.metrics.get(n) is not None for r in rows)]
    headers = ["device", "bundle", "format", "threads", *[SHORT.get(n, n) for n in shown]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        cells = [r.device, r.bundle, r.fmt_quant, str(r.threads), *[_cell(r, n) for n in shown]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_table(records: list[LoadedRecord]) -> str:
    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        dev = rec.raw.get("device")
        if isinstance(dev, dict):
            seen.setdefault(str(dev.get("hostname", "?")) + str(dev.get("cpu_model", "")), dev)
    lines = ["| host | cpu | cores (phys/log) | RAM GB | OS | load avg 1m | llama_cpp_python | onnxruntime-genai |",
             "|---|---|---|---|---|---|---|---|"]
    for dev in seen.values():
        libs = dev.get("libraries") if isinstance(dev.get("libraries"), dict) else {}
        lines.append(f"| {dev.get('hostname', '—')} | {dev.get('cpu_model', '—')} | {dev.get('cores_physical', '—')}/"
                     f"{dev.get('cores_logical', '—')} | {dev.get('ram_gb', '—')} | {dev.get('os', '—')} | "
                     f"{dev.get('load_avg_1m', '—')} | {libs.get('llama_cpp_python', '—')} | "
                     f"{libs.get('onnxruntime-genai', '—')} |")
    return "\n".join(lines)


def build_markdown(rows: list[Row], records: list[LoadedRecord], plots: list[str], groups: list[FileGroup],
                   eval_figures: dict[str, dict[str, float | None]] | None = None,
                   unmatched_eval: list[str] | None = None) -> str:
    measured_rows = [r for r in rows if r.mode != "emulated"]
    emulated_rows = [r for r in rows if r.mode == "emulated"]
    parts = ["# slmforge bench report", "",
             (f"{len(rows)} records; generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}. "
              "Values are mean ± std over repeats. Projected numbers are computed for an emulated profile from host "
              "measurements, never measured on that device, and stand in their own columns; `—` marks a gap "
              "(reasons listed at the end); `†` marks a value from a record that is not of the current schema "
              f"(version {SCHEMA_VERSION})."), "",
             "## Summary", "",
             ("One row per device and model file: bundles that ship the same file (same sha256) are one row listing "
              "their profiles, with the range when their measurements differ. tok/s is decode (tg128); "
              "quality figures come from the bench records"
              + (" and from `slmforge eval` (eval F1, citation accuracy)." if eval_figures else ".")), "",
             summary_markdown(groups, eval_given=bool(eval_figures)), ""]
    side_by_side = models_markdown(pick(rows))
    if side_by_side:
        parts += ["## Base models side by side, per profile", "",
                  ("Each model's bundle built for the profile (or, where export refused the profile, the model's "
                   "smallest bundle, hatched in the plot) emulated on it: decode projected from the host's by memory "
                   "bandwidth, the host-measured peak RSS against the profile's app memory, export's quality gate on "
                   "that file (perplexity ratio to the float32 source, mean KL, top-1 agreement), and the bench's "
                   "perplexity, FAQ hit@k and QA F1 of the bundle."), "", side_by_side, ""]
    if measured_rows:
        parts += ["## Measured on the device", ""]
        for title, names in TABLES.items():
            parts += [f"### {title}", "", markdown_table(measured_rows, names), ""]
    if emulated_rows:
        parts += ["## Projected for emulated profiles", "",
                  ("Decode speed scaled from the host's by the profile's memory bandwidth; memory is the "
                   "host-measured peak against the profile's budget."), "", markdown_table(emulated_rows, PROJECTED_TABLE), ""]
    if eval_figures:
        parts += ["## Eval (slmforge eval)", "", eval_table(eval_figures), ""]
        if unmatched_eval:
            parts += [f"Systems with no bundle of that name in these records: {', '.join(unmatched_eval)}.", ""]
    parts += ["## Devices", "", device_table(records), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    gaps = [g for r in rows for g in r.gaps] + absent_values(rows)
    if gaps:
        parts += ["## Gaps and notes", ""] + [f"- {g}" for g in gaps] + [""]
    return "\n".join(parts)


def eval_table(figures: dict[str, dict[str, float | None]]) -> str:
    lines = ["| system | F1 | citation accuracy | hit@k |", "|---|---|---|---|"]
    for name, figs in figures.items():
        cells = ["—" if figs.get(k) is None else f"{figs[k]:.3g}" for k in EVAL_FIGURES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def absent_values(rows: list[Row]) -> list[str]:
    """Why values are absent, one line per distinct reason: which metrics, in which records."""
    reasons: dict[str, tuple[dict[str, None], dict[str, None]]] = {}
    for r in rows:
        for name, m in r.metrics.items():
            if m is not None and m.value is None:
                names, sources = reasons.setdefault(f"{m.status}: {m.note}", ({}, {}))
                names[SHORT.get(name, name)] = None
                sources[r.source] = None
    return [f"{', '.join(names)} — {why} ({', '.join(sources)})" for why, (names, sources) in reasons.items()]


def build_report(results: list[Path], out: Path, eval_file: Path | None = None) -> dict[str, Any]:
    """Write report.md, report.json and the PNG plots into ``out``; returns a summary."""
    from slmforge.bench.plots import draw_all

    eval_figures = read_eval(eval_file) if eval_file is not None else None
    records = read_records(results)
    if not records:
        raise UserError(f"no records in {', '.join(map(str, results))}; run 'slmforge bench run ... --out FILE' first")
    rows = [to_row(r) for r in records if r.raw]
    if not rows:
        raise UserError("none of the result lines is a JSON record; are these results.jsonl files from 'bench run'?")
    groups = collapse(rows)
    unmatched = attach_eval(groups, eval_figures) if eval_figures else []
    problems = [g for r in rows for g in r.gaps if "missing" in g or "schema" in g or "error" in g]
    problems += [f"{r.source}: {p}" for r in records if not r.raw for p in r.problems]
    with atomic_dir(out) as tmp:
        plots = draw_all(groups, tmp)
        if plot_models(pick(rows), tmp / MODELS_PNG):
            plots.append(MODELS_PNG)
        atomic_write_text(tmp / "report.md", build_markdown(rows, records, plots, groups, eval_figures, unmatched))
        atomic_write_json(tmp / "report.json", {
            "schema_version": SCHEMA_VERSION,
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sources": [str(p) for p in results],
            "eval": None if eval_file is None else {"path": str(eval_file), "systems": eval_figures,
                                                   "unmatched": unmatched},
            "summary": summary_json(groups),
            "models_by_profile": models_json(pick(rows)),
            "rows": [{"device": r.device, "bundle": r.bundle, "format": r.fmt_quant, "mode": r.mode,
                      "threads": r.threads, "valid": r.valid, "source": r.source, "model_sha256": r.sha256,
                      "metrics": {k: (m.model_dump(mode="json") if m else None) for k, m in r.metrics.items()},
                      "gaps": r.gaps} for r in rows],
            "problems": problems,
        })
    return {"records": len(rows), "summary_rows": len(groups), "files": ["report.md", "report.json", *plots],
            "problems": problems}
