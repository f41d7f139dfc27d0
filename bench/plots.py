"""The report's PNGs (matplotlib, Agg): tok/s by device and quant, quality vs. speed, memory vs. budget.

Each plot draws the summary's rows (one per device and model file, ``bench/summary.py``) and names
a file as the summary table does ("gguf Q8_0 · 9c6eba25"). Projected values are drawn hatched and
labelled "projected"; rows without a value are left out of a plot and listed in the report's gaps,
never drawn as zero.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slmforge.bench.summary import FileGroup


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display); shared by the bench's plotting modules."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_png(plt, fig, path: Path, dpi: int = 110, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """``fig`` laid out inside ``rect`` (room left for a figure legend) and written to ``path`` under a temp name,
    renamed at the end; the figure closed."""
    fig.tight_layout(rect=rect)
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def _save(plt, fig, axes, path: Path, title: str) -> bool:
    """One legend entry per label (its first, unhatched drawing) from all ``axes``, a title, the PNG written."""
    unique: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            unique.setdefault(label, handle)
    axes[0].legend(unique.values(), unique.keys(), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _value(row: FileGroup, name: str) -> tuple[float | None, float, bool]:
    m = row.metrics.get(name)
    if m is None or m.value is None:
        return None, 0.0, False
    return m.value, m.std or 0.0, m.status == "projected"


def _decode(row: FileGroup) -> tuple[float | None, float, bool]:
    """Measured tg128, or the projection for an emulated profile."""
    value = _value(row, "tg128_tok_s")
    return value if value[0] is not None else _value(row, "tg128_projected_tok_s")


def plot_speed(rows: list[FileGroup], path: Path) -> bool:
    """Grouped bars: decode (tg128) and prefill (pp512) tok/s per device, one bar per model file."""
    plt = pyplot()
    devices = list(dict.fromkeys(r.device for r in rows))
    bundles = list(dict.fromkeys(r.file_label for r in rows))
    if not any(_decode(r)[0] for r in rows):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 2.2 * len(devices) + 4), 5.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(1, len(bundles))
    colors = plt.cm.tab10.colors
    for ax, metric, title in ((axes[0], "tg128", "decode tg128 (tok/s)"), (axes[1], "pp512_tok_s", "prefill pp512 (tok/s)")):
        plot_devices = devices if metric == "tg128" else [d for d in devices if "(emulated)" not in d]
        for b, bundle in enumerate(bundles):
            for d, device in enumerate(plot_devices):
                row = next((r for r in rows if r.device == device and r.file_label == bundle), None)
                if row is None:
                    continue
                value, std, projected = _decode(row) if metric == "tg128" else _value(row, metric)
                if value is None:
                    continue
                x = d - 0.4 + width * (b + 0.5)
                ax.bar(x, value, width, yerr=std or None, color=colors[b % 10], capsize=3,
                       hatch="//" if projected else None, edgecolor="black" if projected else None, alpha=0.85,
                       label=bundle)
                ax.annotate(f"{value:.3g}", (x, value + std), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(plot_devices)))
        ax.set_xticklabels([d.replace(" (emulated)", "\n(emulated:\nprojected)") for d in plot_devices], fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, list(axes), path,
                 "Tokens/s by device and quantization (hatched = projected from host bandwidth, not measured)")


def plot_quality_speed(rows: list[FileGroup], path: Path) -> bool:
    """Each measured model file as a point: decode speed against perplexity and against retrieval/answer quality."""
    plt = pyplot()
    measured = [r for r in rows if r.mode == "measured" and _value(r, "tg128_tok_s")[0] is not None]
    panels = [(n, label) for n, label in (("perplexity", "held-out perplexity (lower is better)"),
                                          ("qa_token_f1", "QA token F1 (higher is better)"),
                                          ("faq_hit_at_k", "FAQ hit@k (higher is better)"))
              if any(_value(r, n)[0] is not None for r in measured)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.3), squeeze=False)
    devices = list(dict.fromkeys(r.device for r in measured))
    markers = "osD^v<>"
    for ax, (name, label) in zip(axes[0], panels):
        for i, r in enumerate(measured):
            y, _, _ = _value(r, name)
            x, xerr, _ = _value(r, "tg128_tok_s")
            if y is None:
                continue
            d = devices.index(r.device)
            ax.errorbar(x, y, xerr=xerr or None, fmt=markers[d % len(markers)], color=plt.cm.tab10.colors[d % 10],
                        capsize=3, label=r.device)
            ax.annotate(r.file_label, (x, y), textcoords="offset points", xytext=(5, 4 + 9 * (i % 3)), fontsize=7)
        ax.set_xlabel("decode tg128 tok/s (measured)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return _save(plt, fig, list(axes[0]), path, "Quality vs. speed: a faster quant that answers worse shows up here")


def plot_memory(rows: list[FileGroup], path: Path) -> bool:
    """Peak RSS of each model file against each device's app-memory budget (log scale; red = does not fit)."""
    plt = pyplot()
    items = [(r, _value(r, "peak_rss_mb")[0], _value(r, "app_memory_mb")[0]) for r in rows]
    items = [(r, rss, budget) for r, rss, budget in items if rss is not None and budget is not None]
    if not items:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(items) + 1.8))
    for i, (r, rss, budget) in enumerate(items):
        fits = rss <= budget
        ax.barh(i, rss, color="tab:green" if fits else "tab:red", alpha=0.8)
        ax.plot([budget, budget], [i - 0.4, i + 0.4], color="black", lw=2)
        ax.annotate(f"{rss:.0f} / {budget:.0f} MB", (rss, i), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=7)
    ax.set_yticks(range(len(items)))
    ax.set_yticklabels([f"{r.device} | {r.file_label}" for r, _, _ in items], fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(left=10 ** math.floor(math.log10(min(rss for _, rss, _ in items))),
                right=max(max(b for _, _, b in items), max(rss for _, rss, _ in items)) * 3)
    ax.set_xlabel("peak RSS, MB (log scale); black tick = the profile's app memory budget")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Memory vs. budget: green fits, red does not\n(emulated rows: host-measured RSS against the profile budget)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def draw_all(rows: list[FileGroup], out: Path) -> list[str]:
    """Draw every plot that has data from the summary's rows; returns the file names written."""
    drawn = []
    for name, draw in (("tok_s_by_device.png", plot_speed), ("quality_vs_speed.png", plot_quality_speed),
                       ("memory_vs_budget.png", plot_memory)):
        if draw(rows, out / name):
            drawn.append(name)
    return drawn
