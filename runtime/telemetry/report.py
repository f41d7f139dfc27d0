"""Turn telemetry rows into the numbers and the picture a device owner looks at.

Latency and speed percentiles, memory, cache and routing shares, feedback, and the
drift verdict (runtime.telemetry.drift) with its plain-language recommendation.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.runtime.telemetry.drift import DEFAULT_WINDOW, IndexReference, drift_report


def _pct(values: list[Any], q: float, scale: float = 1.0) -> float | None:
    real = [float(v) for v in values if v is not None]
    return round(float(np.percentile(real, q)) * scale, 2) if real else None


def chat_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answered chat requests (status 200): what latency, speed and drift are computed over."""
    return [r for r in rows if r.get("gen_ai.operation.name") == "chat" and r.get("http.response.status_code") == 200]


def build_report(rows: list[dict[str, Any]], feedback: list[dict[str, Any]], reference: IndexReference,
                 window: int = DEFAULT_WINDOW) -> dict[str, Any]:
    chats = chat_rows(rows)
    local = [r for r in chats if r.get("slmforge.route") in ("local", "escalation_failed")]
    statuses = Counter(int(r["http.response.status_code"]) for r in rows if r.get("http.response.status_code"))
    col = lambda name, src=chats: [r.get(name) for r in src]
    bad = sum(1 for f in feedback if not f.get("label"))
    bad_rate = round(bad / len(feedback), 3) if feedback else None
    return {
        "requests": len(rows),
        "chat_answers": len(chats),
        "status_codes": {str(k): v for k, v in sorted(statuses.items())},
        "latency_ms": {"p50": _pct(col("gen_ai.server.request.duration"), 50, 1000),
                       "p95": _pct(col("gen_ai.server.request.duration"), 95, 1000)},
        "ttft_ms": {"p50": _pct(col("gen_ai.server.time_to_first_token", local), 50, 1000),
                    "p95": _pct(col("gen_ai.server.time_to_first_token", local), 95, 1000)},
        "decode_tok_s": {"p50": _pct(col("slmforge.decode.tokens_per_second", local), 50),
                         "p5": _pct(col("slmforge.decode.tokens_per_second", local), 5)},
        "memory_mb": {"rss_p50": _pct(col("process.memory.usage"), 50, 1 / 2**20),
                      "peak": _pct(col("slmforge.process.memory.peak"), 100, 1 / 2**20)},
        "cpu_utilization_mean": _pct(col("process.cpu.utilization"), 50),
        "battery": {"last_charge": next((r["hw.battery.charge"] for r in reversed(rows)
                                         if r.get("hw.battery.charge") is not None), None)},
        "routes": dict(Counter(r.get("slmforge.route") for r in chats)),
        "cache_hit_rate": round(sum(1 for r in chats if r.get("slmforge.cache.hit") not in (None, "miss"))
                                / len(chats), 3) if chats else None,
        "feedback": {"ratings": len(feedback), "bad": bad, "bad_rate": bad_rate},
        "drift": drift_report(chats, reference, window=window, bad_feedback_rate=bad_rate),
    }


def answer_series(rows: list[dict[str, Any]], last: int = 200) -> list[dict[str, Any]]:
    """The latest answered questions in order, the figures the status page draws over time (no text, no vectors)."""
    def ms(value: Any) -> float | None:
        return None if value is None else round(float(value) * 1000, 1)

    return [{"time": r.get("time"), "latency_ms": ms(r.get("gen_ai.server.request.duration")),
             "ttft_ms": ms(r.get("gen_ai.server.time_to_first_token")),
             "decode_tok_s": r.get("slmforge.decode.tokens_per_second"),
             "top1": r.get("slmforge.retrieval.top1_score"),
             "out_of_domain": None if r.get("slmforge.query.out_of_domain") is None
             else bool(r["slmforge.query.out_of_domain"]),
             "route": r.get("slmforge.route")} for r in chat_rows(rows)[-last:]]


def plot_report(rows: list[dict[str, Any]], report: dict[str, Any], reference: IndexReference, out: Path) -> Path:
    """Four panels over request order: latency, decode speed, retrieval top-1 (with the OOD line), memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slmforge.fileio import atomic_write_bytes

    chats = chat_rows(rows)
    x = np.arange(1, len(chats) + 1)

    def series(name: str, scale: float = 1.0) -> np.ndarray:
        return np.array([np.nan if r.get(name) is None else float(r[name]) * scale for r in chats])

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    panels = [
        ("latency (ms)", series("gen_ai.server.request.duration", 1000), None),
        ("decode (tok/s)", series("slmforge.decode.tokens_per_second"), None),
        ("retrieval top-1", series("slmforge.retrieval.top1_score"), reference.ood_threshold),
        ("RSS (MB)", series("process.memory.usage", 1 / 2**20), None),
    ]
    drift = report["drift"]
    for ax, (label, values, threshold) in zip(axes, panels):
        ax.plot(x, values, marker=".", linewidth=0.8)
        ax.set_ylabel(label)
        if not np.isfinite(values).any():
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.grid(alpha=0.3)
        if threshold is not None:
            ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"out-of-domain < {threshold}")
            ax.legend(loc="lower left", fontsize=8)
        for i in drift["drifted_windows"]:
            w = drift["windows"][i]
            ax.axvspan(w["start"] + 0.5, w["start"] + w["requests"] + 0.5, color="orange", alpha=0.15)
    axes[-1].set_xlabel("answered question (order)")
    fig.suptitle(f"slmforge telemetry: {len(chats)} answers, drift status: {drift['status']} "
                 f"(shaded: drifted windows)", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
