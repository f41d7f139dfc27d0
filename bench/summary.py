"""The report's first table: one row per (device, bundle file), answering "which bundle, how fast, does it fit, how good".

Bundles built for different profiles often ship the same model file (same sha256); measuring them
gives the same numbers up to noise, so they are collapsed into one row that lists their profiles.
Measured and projected figures sit in their own columns and are never mixed. Quality comes from
the bench records (perplexity, FAQ hit@k, QA F1) and, when given, from ``slmforge eval``'s
``eval.json`` (F1 and citation accuracy per system, matched to bundles by name).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmforge.bench.records import Metric, fmt

from slmforge.errors import UserError

if TYPE_CHECKING:
    from slmforge.bench.report import Row

EVAL_FIGURES = ("f1", "citation_accuracy", "hit_at_k")


@dataclass
class FileGroup:
    """Records of one model file on one device; ``metrics`` merge them (mean, with the spread noted)."""

    device: str
    mode: str
    fmt_quant: str
    sha256: str | None
    bundles: list[str]
    rows: list[Row]
    metrics: dict[str, Metric | None] = field(default_factory=dict)
    eval: dict[str, float | None] = field(default_factory=dict)

    @property
    def file_label(self) -> str:
        """How tables and plots name the file: format, quant and the first 8 hex of its sha256."""
        return f"{self.fmt_quant} · {self.sha256[:8]}" if self.sha256 else f"{self.fmt_quant} · {self.bundles[0]}"


def _file_key(row: Row) -> str:
    return row.sha256 or f"name:{row.bundle}"


def _merge(metrics: list[Metric | None]) -> Metric | None:
    """One metric for identical files: the value if they agree, else the mean with the range in the note."""
    real = [m for m in metrics if m is not None and m.value is not None]
    if not real:
        return next((m for m in metrics if m is not None), None)
    values = [m.value for m in real if m.value is not None]
    if len(real) == 1 or max(values) == min(values):
        return real[0]
    first = real[0]
    return Metric(value=round(statistics.fmean(values), 4), std=round(statistics.pstdev(values), 4), n=len(values),
                  unit=first.unit, status=first.status,
                  note=f"mean of {len(values)} bundles with this file (range {min(values):.4g}–{max(values):.4g})")


def collapse(rows: list[Row]) -> list[FileGroup]:
    """Group rows by (device, model file); order follows the first appearance."""
    groups: dict[tuple[str, str, bool], FileGroup] = {}
    for row in rows:
        key = (row.device, _file_key(row), row.valid)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FileGroup(device=row.device, mode=row.mode, fmt_quant=row.fmt_quant,
                                            sha256=row.sha256, bundles=[], rows=[])
        group.rows.append(row)
        if row.bundle not in group.bundles:
            group.bundles.append(row.bundle)
    for group in groups.values():
        names = dict.fromkeys(n for r in group.rows for n in r.metrics)
        group.metrics = {n: _merge([r.metrics.get(n) for r in group.rows]) for n in names}
    return list(groups.values())


# -- eval.json ---------------------------------------------------------------------------------------------


def _figure(raw: Any) -> float | None:
    """A number, or the point estimate of an interval dict ({"value"|"mean"|"point", "low", "high"})."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, dict):
        for key in ("value", "mean", "point", "estimate"):
            if isinstance(raw.get(key), (int, float)):
                return float(raw[key])
    return None


def read_eval(path: Path) -> dict[str, dict[str, float | None]]:
    """``slmforge eval``'s figures per system name: {name: {"f1", "citation_accuracy", "hit_at_k"}}.

    ``path`` is eval.json or the folder ``slmforge eval --out`` wrote it into."""
    if path.is_dir():
        path = path / "eval.json"
    if not path.is_file():
        raise UserError(f"--eval {path}: not found; give the eval.json written by 'slmforge eval'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--eval {path}: not JSON ({exc}); give the eval.json written by 'slmforge eval'") from None
    systems = data.get("systems") if isinstance(data, dict) else None
    if not isinstance(systems, dict) or not systems:
        raise UserError(f"--eval {path}: no 'systems' object; is this the eval.json written by 'slmforge eval'?")
    return {str(name): {k: _figure(figs.get(k)) if isinstance(figs, dict) else None for k in EVAL_FIGURES}
            for name, figs in systems.items()}


def _system_name(name: str) -> str:
    return Path(name.rstrip("/")).name.removesuffix(".tar")


def attach_eval(groups: list[FileGroup], figures: dict[str, dict[str, float | None]]) -> list[str]:
    """Give each group the figures of the eval system named like one of its bundles; returns unmatched names."""
    by_name = {_system_name(name): figs for name, figs in figures.items()}
    used: set[str] = set()
    for group in groups:
        for bundle in group.bundles:
            if bundle in by_name:
                group.eval = by_name[bundle]
                used.add(bundle)
                break
    return [name for name in figures if _system_name(name) not in used]


# -- the table ---------------------------------------------------------------------------------------------


def _value(group: FileGroup, name: str) -> float | None:
    m = group.metrics.get(name)
    return None if m is None else m.value


def _cell(group: FileGroup, name: str) -> str:
    """A merged figure as text: one value, or the range over identical files (never a projection label here)."""
    m = group.metrics.get(name)
    if m is None or m.value is None:
        return fmt(m)
    values = [r.metrics[name].value for r in group.rows if r.metrics.get(name) is not None
              and r.metrics[name].value is not None]
    if len(set(values)) > 1:
        lo, hi = min(values), max(values)
        return f"{fmt(Metric(value=lo, unit=m.unit, status='measured'))}–{fmt(Metric(value=hi, unit=m.unit, status='measured'))}"
    return fmt(m.model_copy(update={"status": "measured"}))


def fits_cell(group: FileGroup) -> str:
    rss, budget = _value(group, "peak_rss_mb"), _value(group, "app_memory_mb")
    if rss is None or budget is None:
        return "—"
    verdict = "fits" if rss <= budget else "**does not fit**"
    return f"{rss:.0f} / {budget:.0f} MB: {verdict}"


def _eval_cell(group: FileGroup, key: str) -> str:
    value = group.eval.get(key)
    return "—" if value is None else f"{value:.3g}"


SUMMARY_HEADERS = ["device", "model file", "bundles (profiles)", "tok/s measured", "tok/s projected",
                   "RAG TTFT ms", "peak RSS / budget", "perplexity", "FAQ hit@k", "QA F1", "eval F1",
                   "eval citation acc."]


def summary_rows(groups: list[FileGroup]) -> list[list[str]]:
    """Cells of the summary table; measured decode (tg128) and its projection in separate columns."""
    out = []
    for g in groups:
        out.append([g.device, g.file_label, ", ".join(g.bundles), _cell(g, "tg128_tok_s"),
                    _cell(g, "tg128_projected_tok_s"), _cell(g, "rag_ttft_ms"), fits_cell(g), _cell(g, "perplexity"),
                    _cell(g, "faq_hit_at_k"), _cell(g, "qa_token_f1"), _eval_cell(g, "f1"),
                    _eval_cell(g, "citation_accuracy")])
    return out


def summary_markdown(groups: list[FileGroup], eval_given: bool) -> str:
    headers = list(SUMMARY_HEADERS)
    rows = summary_rows(groups)
    if not eval_given:  # no eval.json: its columns would be all gaps
        headers, rows = headers[:-2], [r[:-2] for r in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def summary_json(groups: list[FileGroup]) -> list[dict[str, Any]]:
    return [{"device": g.device, "mode": g.mode, "file": g.file_label, "format": g.fmt_quant, "model_sha256": g.sha256,
             "bundles": g.bundles,
             "metrics": {k: (m.model_dump(mode="json") if m else None) for k, m in g.metrics.items()},
             "eval": g.eval or None} for g in groups]
