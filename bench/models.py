"""Base models side by side, per device profile: what each model gets on each profile and what it costs.

A bench run of one recipe's bundles answers "which file for which device"; a user choosing a base
model asks it across models: on a Pi 5, a phone, a Pi Zero 2 W, what does SmolLM2 get and what does
Gemma get — the (format, quant) export chose, how fast (projected for the profile from the host's
measurement, and measured on the host), how much memory against the profile's budget, export's
quality gate on that file, and retrieval/answer quality. Records name their base model (from the
bundle manifest, ``bench/run_bundle.describe``); this table needs two models or more.

For a profile a model has no bundle for (export refused it, e.g. the Pi Zero 2 W), the row shows the
model's smallest bundle emulated on that profile, so the shortfall is a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slmforge.bench.report import Row

EMULATED = " (emulated)"


@dataclass
class ModelOnProfile:
    """One base model on one profile: the bundle built for it (or the smallest, when none was)."""

    profile: str
    model: str
    row: Row  # the emulated record on this profile
    host: Row | None  # the same file measured on the host
    built_for_profile: bool

    def value(self, name: str, host: bool = False) -> float | None:
        row = self.host if host else self.row
        m = row.metrics.get(name) if row is not None else None
        return None if m is None else m.value


def pick(rows: list[Row]) -> list[ModelOnProfile]:
    """One entry per (emulated profile, base model), in profile then model order."""
    emulated = [r for r in rows if r.mode == "emulated" and r.base_model]
    host = {r.sha256: r for r in rows if r.mode != "emulated" and r.sha256}
    out = []
    for profile in dict.fromkeys(r.device.removesuffix(EMULATED) for r in emulated):
        for model in sorted({r.base_model for r in emulated if r.base_model}):
            mine = [r for r in emulated if r.device.removesuffix(EMULATED) == profile and r.base_model == model]
            if not mine:
                continue
            built = [r for r in mine if r.built_for == profile]
            row = built[0] if built else min(mine, key=lambda r: r.model_bytes or float("inf"))
            out.append(ModelOnProfile(profile, model, row, host.get(row.sha256), bool(built)))
    return out


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _choice(e: ModelOnProfile) -> str:
    size = f"{e.row.model_bytes / 1e6:,.1f} MB" if e.row.model_bytes else "? MB"
    choice = f"{e.row.fmt_quant} ({size})"
    return choice if e.built_for_profile else f"no bundle (export refused); smallest: {choice}, built for {e.row.built_for}"


def _memory(e: ModelOnProfile) -> str:
    rss, budget = e.value("peak_rss_mb"), e.value("app_memory_mb")
    if rss is None or budget is None:
        return "—"
    verdict = "fits" if rss <= budget else f"**does not fit: {rss - budget:,.0f} MB short**"
    return f"{rss:,.0f} / {budget:,.0f} MB: {verdict}"


def _gate(e: ModelOnProfile) -> str:
    gate = e.row.gate or {}
    if not gate:
        return "—"
    parts = [f"ppl ×{gate['ppl_ratio']:.4f}" if gate.get("ppl_ratio") is not None else None,
             f"KL {gate['kl_mean']:.3f}" if gate.get("kl_mean") is not None else None,
             f"top-1 {gate['top1_agreement']:.3f}" if gate.get("top1_agreement") is not None else None]
    return f"{gate.get('gate', '?')}: " + ", ".join(p for p in parts if p)


def models_markdown(entries: list[ModelOnProfile]) -> str:
    """The side-by-side table (empty when the records hold fewer than two base models)."""
    if len({e.model for e in entries}) < 2:
        return ""
    head = ["profile", "base model", "choice (format, quant)", "decode tok/s projected", "decode tok/s on host",
            "peak RSS / budget", "export gate (ppl ratio, KL, top-1)", "perplexity", "FAQ hit@k", "QA F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        lines.append("| " + " | ".join([
            e.profile, e.model, _choice(e), _num(e.value("tg128_projected_tok_s")),
            _num(e.value("tg128_tok_s", host=True)), _memory(e), _gate(e), _num(e.value("perplexity"), 2),
            _num(e.value("faq_hit_at_k"), 3), _num(e.value("qa_token_f1"), 3)]) + " |")
    return "\n".join(lines)


def models_json(entries: list[ModelOnProfile]) -> list[dict[str, Any]]:
    return [{"profile": e.profile, "base_model": e.model, "bundle": e.row.bundle, "format": e.row.fmt_quant,
             "model_bytes": e.row.model_bytes, "built_for_profile": e.built_for_profile,
             "decode_tok_s_projected": e.value("tg128_projected_tok_s"),
             "decode_tok_s_host": e.value("tg128_tok_s", host=True), "peak_rss_mb": e.value("peak_rss_mb"),
             "app_memory_mb": e.value("app_memory_mb"), "gate": e.row.gate, "perplexity": e.value("perplexity"),
             "faq_hit_at_k": e.value("faq_hit_at_k"), "qa_token_f1": e.value("qa_token_f1")} for e in entries]


def plot_models(entries: list[ModelOnProfile], path: Path) -> bool:
    """Two panels per profile, one bar per model: projected decode tok/s, and peak RSS against the budget."""
    from slmforge.bench.plots import pyplot, write_png

    if len({e.model for e in entries}) < 2:
        return False
    plt = pyplot()
    profiles = list(dict.fromkeys(e.profile for e in entries))
    models = sorted({e.model for e in entries})
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.6))
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        for i, profile in enumerate(profiles):
            e = next((x for x in entries if x.profile == profile and x.model == model), None)
            if e is None:
                continue
            x = i + (j - (len(models) - 1) / 2) * width
            color = f"C{j}"
            tok = e.value("tg128_projected_tok_s")
            if tok is not None:
                speed.bar(x, tok, width, color=color, label=model, hatch=None if e.built_for_profile else "//")
                speed.annotate(e.row.fmt_quant.split()[-1], (x, tok), ha="center", va="bottom", fontsize=7)
            rss, budget = e.value("peak_rss_mb"), e.value("app_memory_mb")
            if rss is not None and budget:
                share = rss / budget
                memory.bar(x, share, width, color=color, label=model, hatch=None if share <= 1 else "xx")
                memory.annotate(f"{rss:,.0f} MB", (x, share), ha="center", va="bottom", fontsize=7)
    for ax in (speed, memory):
        ax.set_xticks(range(len(profiles)))
        ax.set_xticklabels(profiles, fontsize=8)
    speed.set_ylabel("decode tok/s, projected for the profile")
    speed.set_title("speed (bar label: the quant export chose; hatched: no bundle, smallest file)", fontsize=9)
    memory.axhline(1.0, color="black", linewidth=1, linestyle="--")
    memory.set_yscale("log")
    memory.set_ylabel("peak RSS / the profile's app memory (log)")
    memory.set_title("memory (dashed: the budget; hatched: does not fit)", fontsize=9)
    handles: dict[str, Any] = {}
    for handle, label in zip(*speed.get_legend_handles_labels()):
        handles.setdefault(label, handle)
    speed.legend(handles.values(), handles.keys(), fontsize=8)
    fig.suptitle("base models side by side per device profile", fontsize=10)
    write_png(plt, fig, path)
    return True
