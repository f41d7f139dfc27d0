"""What `slmforge eval` shows: the table, the one-line gain summary, the PNG, and the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.bench.evaluate import COMPARED, RATES
from slmforge.bench.plots import pyplot

from slmforge.datafiles import jsonl_text
from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_json, atomic_write_text
from slmforge.output import format_table

LABELS = {
    "f1": "answer F1", "rouge_l": "ROUGE-L", "hit_at_k": "hit@k", "citation_rate": "citation rate",
    "citation_accuracy": "citation accuracy",
    "citation_accuracy_as_generated": "citation accuracy (markers as generated)", "groundedness": "groundedness",
    "answer_rate_in_domain": "answered (held-out)", "refusal_rate": "refused (off-domain probes)",
    "closed_book_f1": "closed-book F1", "answer_tokens": "answer tokens (mean)", "ttft_ms": "TTFT ms (median)",
    "decode_tok_s": "decode tok/s (median)",
}
TABLE_ORDER = ("f1", "rouge_l", "hit_at_k", "citation_rate", "citation_accuracy", "citation_accuracy_as_generated",
               "groundedness",
               "answer_rate_in_domain", "refusal_rate", "closed_book_f1", "answer_tokens", "ttft_ms", "decode_tok_s")
PNG = "eval.png"


def _num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _label(metric: str, result: dict[str, Any]) -> str:
    return f"hit@{result['k']}" if metric == "hit_at_k" else LABELS[metric]


def _delta(c: dict[str, Any]) -> str:
    if c["delta"] is None:
        return "n/a"
    lo, hi = c["ci95"]
    return f"{_num(c['delta'], sign=True)} [{_num(lo, sign=True)}, {_num(hi, sign=True)}]" + (" *" if c["significant"] else "")


def table(result: dict[str, Any]) -> str:
    """Metrics down, systems across, then each system's difference from the baseline (95 % CI; * = excludes 0)."""
    names = list(result["systems"])
    others = [n for n in names if n != result["baseline"]] if result["baseline"] else []
    comp = {(c["system"], c["metric"]): c for c in result["comparisons"]}
    headers = ["metric", *[f"{n} (baseline)" if n == result["baseline"] else n for n in names],
               *[f"Δ {n} (95 % CI)" for n in others]]
    rows = []
    for metric in TABLE_ORDER:
        if metric == "closed_book_f1" and not result["closed_book"]:
            continue
        digits = 0 if metric in ("ttft_ms",) else (1 if metric in ("answer_tokens", "decode_tok_s") else 2)
        cells = [_num(result["systems"][n].get(metric), digits) for n in names]
        deltas = [_delta(comp[(n, metric)]) if (n, metric) in comp else "" for n in others]
        rows.append([_label(metric, result), *cells, *deltas])
    return format_table(headers, rows)


def gain_line(result: dict[str, Any], system: str | None = None) -> str:
    """One line: answer F1 and citation accuracy of ``system`` (default: the first non-baseline) against the
    baseline, with the paired 95 % interval of each difference."""
    base = result["baseline"]
    names = [n for n in result["systems"] if n != base]
    name = system or (names[0] if names else base)
    if name is None:
        raise ValueError("the eval result holds no system")
    n = result["questions"]
    sys_m = result["systems"][name]
    if not base or name == base:
        return (f"{name} (+RAG, {n} questions): F1 {_num(sys_m['f1'])}, citation accuracy "
                f"{_num(sys_m['citation_accuracy'])} (no baseline to compare with)")
    base_m = result["systems"][base]
    comp = {c["metric"]: c for c in result["comparisons"] if c["system"] == name}
    parts = []
    for metric, label in (("f1", "F1"), ("citation_accuracy", "citation accuracy")):
        c = comp[metric]
        change = "" if c["delta"] is None else \
            f" ({_num(c['delta'], sign=True)}, 95 % CI {_num(c['ci95'][0], sign=True)}..{_num(c['ci95'][1], sign=True)})"
        parts.append(f"{label} {_num(base_m[metric])} → {_num(sys_m[metric])}{change}")
    return f"{name} vs {base} (+RAG, {n} questions): " + ", ".join(parts)


def plot(result: dict[str, Any], path: Path) -> None:
    """Left: each system's rates with their 95 % intervals. Right (with a baseline): differences from the
    baseline with paired 95 % intervals; a bar that does not cross 0 is a real difference."""
    plt = pyplot()
    names = list(result["systems"])
    metrics = [m for m in RATES if result["closed_book"] or m != "closed_book_f1"]
    comparisons = [c for c in result["comparisons"] if c["delta"] is not None]
    ncols = 2 if comparisons else 1
    fig, axes = plt.subplots(1, ncols, figsize=(13 if ncols == 2 else 9, 5.6), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2][:ncols]})
    ax = axes[0][0]
    colors = plt.cm.tab10.colors
    width = 0.8 / max(1, len(names))
    for s, name in enumerate(names):
        values = [result["systems"][name].get(m) for m in metrics]
        xs = [i - 0.4 + width * (s + 0.5) for i in range(len(metrics))]
        ci = [result["intervals"][name].get(m) for m in metrics]
        for x, v, c in zip(xs, values, ci):
            if v is None:  # not judged (e.g. no answer cites): say so rather than draw a zero
                ax.annotate("n/a", (x, 0.01), ha="center", va="bottom", fontsize=7, rotation=90, color="gray")
                continue
            err = [[max(0.0, v - c[0])], [max(0.0, c[1] - v)]] if c else None
            label = f"{name} (baseline)" if name == result["baseline"] else name
            ax.bar(x, v, width, color=colors[s % 10], alpha=0.85, yerr=err, capsize=3, label=label)
            ax.annotate(f"{v:.2f}", (x, (c[1] if c else v) + 0.01), ha="center", va="bottom", fontsize=7,
                        rotation=90)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([_label(m, result).replace(" (", "\n(") for m in metrics], fontsize=8, rotation=30,
                       ha="right")
    ax.set_ylim(0, 1.25)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("share / score (higher is better; 95 % interval)")
    handles = {lab: h for h, lab in zip(*ax.get_legend_handles_labels())}
    ax.legend(handles.values(), handles.keys(), fontsize=8, loc="upper left", ncol=len(names))
    ax.grid(axis="y", alpha=0.3)
    if comparisons:
        dx = axes[0][1]
        compared = [m for m in COMPARED if any(c["metric"] == m for c in comparisons)]
        others = list(dict.fromkeys(c["system"] for c in comparisons))
        step = 0.8 / max(1, len(others))
        for s, name in enumerate(others):
            color = colors[(names.index(name)) % 10]
            for c in (c for c in comparisons if c["system"] == name):
                y = compared.index(c["metric"]) - 0.4 + step * (s + 0.5)
                dx.errorbar(c["delta"], y, xerr=[[c["delta"] - c["ci95"][0]], [c["ci95"][1] - c["delta"]]],
                            fmt="o", color=color, capsize=4, label=f"{name} − {result['baseline']}")
                dx.annotate(f"{c['delta']:+.2f}", (c["ci95"][1], y), xytext=(4, 0), textcoords="offset points",
                            va="center", fontsize=7)
        ends = [v for c in comparisons for v in (*c["ci95"], 0.0)]
        span = max(max(ends) - min(ends), 0.05)
        dx.set_xlim(min(ends) - 0.08 * span, max(ends) + 0.22 * span)  # room for the labels right of each bar
        dx.axvline(0, color="black", linewidth=0.8)
        dx.set_yticks(range(len(compared)))
        dx.set_yticklabels([_label(m, result) for m in compared], fontsize=8)
        dx.invert_yaxis()
        dx.set_xlabel("difference from the baseline (paired bootstrap 95 % interval)")
        handles = {lab: h for h, lab in zip(*dx.get_legend_handles_labels())}
        dx.legend(handles.values(), handles.keys(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13),
                  ncol=min(2, len(handles)))
        dx.grid(axis="x", alpha=0.3)
    fig.suptitle(f"slmforge eval: {result['questions']} held-out questions, k={result['k']}, "
                 f"{result['probes']['count']} off-domain probes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_out(out: Path) -> None:
    """--out must be a new folder or an earlier eval's output (which is replaced); checked before any work."""
    if out.is_file():
        raise UserError(f"--out {out}: is a file; pass a folder for eval.json, answers.jsonl and {PNG}")
    if out.is_dir() and any(out.iterdir()) and not (out / "eval.json").is_file():
        raise UserError(f"--out {out}: folder exists and holds other files; pass a new folder (eval replaces only "
                        "an earlier eval's output)")


def write_outputs(out: Path, result: dict[str, Any], rows: list[dict[str, Any]]) -> list[Path]:
    """eval.json, answers.jsonl and eval.png, all or nothing (built under a temporary name, then renamed)."""
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "eval.json", result)
        atomic_write_text(tmp / "answers.jsonl", jsonl_text(rows))
        plot(result, tmp / PNG)
    return [out / "eval.json", out / "answers.jsonl", out / PNG]
