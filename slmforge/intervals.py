"""95 % bootstrap intervals of a mean and of a paired difference: one home for eval, the benchmarks and the
retriever's validation, so every interval in a report is computed the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def bootstrap_ci(values: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean and its 95 % percentile-bootstrap interval (BOOTSTRAP_SAMPLES resamples of the values)."""
    arr = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(BOOTSTRAP_SAMPLES, len(arr)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(arr.mean()), float(low), float(high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, float]:
    """Mean of a − b over the same questions and its 95 % bootstrap interval."""
    mean, low, high = bootstrap_ci(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), seed)
    return {"mean": round(mean, 4), "ci95_low": round(low, 4), "ci95_high": round(high, 4),
            "significant": bool(low > 0 or high < 0)}


def difference_text(d: dict[str, float]) -> str:
    """A paired difference as reports print it: ``+0.048, 95 % CI -0.048..+0.143``."""
    return f"{d['mean']:+.3f}, 95 % CI {d['ci95_low']:+.3f}..{d['ci95_high']:+.3f}"

