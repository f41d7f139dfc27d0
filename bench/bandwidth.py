"""Host memory bandwidth as the median of probes spread over a bench run.

Why not one probe: on a shared or virtual machine a single copy test swings widely (11.2 to
22.7 GB/s between two runs on the 2-core CI VM), and every emulated decode speed is scaled by
it. Probing before the first bundle and again after each one, and projecting from the median
of all probes so far, ties the figure to the conditions the bundles were measured under; the
spread is recorded so a reader can see how steady the host was.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from slmforge.profiles import measure_memory_bandwidth_gbs

PROBES_AT_START = 5
PROBES_BETWEEN_BUNDLES = 3
PROBE_GAP_S = 0.1


class BandwidthSampler:
    """Collects copy-test probes; ``median`` is what projections and ceilings use."""

    def __init__(self, probe: Callable[[], float] = measure_memory_bandwidth_gbs) -> None:
        self.probe = probe
        self.samples: list[float] = []

    def sample(self, count: int) -> None:
        for i in range(count):
            if i:
                time.sleep(PROBE_GAP_S)
            self.samples.append(float(self.probe()))

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.samples), max(self.samples)

    def describe(self) -> str:
        low, high = self.spread
        return f"median of {len(self.samples)} copy probes over the run ({low:.1f}-{high:.1f} GB/s)"
