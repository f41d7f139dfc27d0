"""`--emulate PROFILE`: judge a bundle against a device we do not have, from host measurements.

What can be carried over honestly is carried over as measured (memory use, quality: they are
properties of the artifact); decode speed is *projected* by the ratio of the profile's memory
bandwidth to the host's measured one (small-model decode is bandwidth-bound), capped at the
profile's bandwidth ceiling. Prefill, TTFT and load time are compute- and storage-bound: they
are left unknown rather than guessed.
"""

from __future__ import annotations

from slmforge.bench.bandwidth import BandwidthSampler
from slmforge.bench.measure import ceiling_metrics, memory_metrics
from slmforge.bench.records import Emulation, Metric, unknown

from slmforge.profiles import DeviceProfile

CARRIED = ("perplexity", "faq_hit_at_k", "qa_token_f1")
NOT_PROJECTED = {"load_ms": "ms", "pp512_tok_s": "tok/s", "tg128_tok_s": "tok/s", "rag_ttft_ms": "ms",
                 "rag_decode_tok_s": "tok/s", "retrieval_p50_ms": "ms", "retrieval_p95_ms": "ms",
                 "energy_j_per_token": "J/token"}
NOT_PROJECTED_WHY = ("not projected: depends on the device's compute, storage or power, not on bandwidth; "
                     "run 'slmforge bench run' on the device")
METHOD = ("tg128 measured on the host with threads capped to the profile's cores, × (profile bandwidth ÷ "
          "host bandwidth, the median of copy probes taken through the run), capped at the profile's bandwidth ceiling; memory and quality measured on the host")


def threads_cap(profile: DeviceProfile, host_cores: int) -> int:
    """The profile's cores, never more than the host has."""
    return max(1, min(profile.cpu.cores, host_cores))


def emulate(profile: DeviceProfile, host: dict[str, Metric], bandwidth: BandwidthSampler, weight_bytes: int,
            threads: int, bundle_format: str) -> tuple[dict[str, Metric], Emulation, list[str]]:
    """Metrics of a bundle on ``profile`` from the host's metrics at ``threads`` threads, with notes."""
    host_bandwidth_gbs = bandwidth.median
    ratio = profile.memory_bandwidth_gbs / host_bandwidth_gbs
    metrics: dict[str, Metric] = {}
    tg = host.get("tg128_tok_s")
    ceiling = ceiling_metrics(weight_bytes, profile.memory_bandwidth_gbs, None, status="projected")
    metrics.update(ceiling)
    if tg is not None and tg.value is not None:
        scaled = tg.value * ratio
        cap = ceiling["decode_ceiling_tok_s"].value or scaled
        note = (f"host tg128 {tg.value:.1f} tok/s at {threads} threads × bandwidth ratio {ratio:.3f}"
                + (f", capped at the ceiling {cap:.1f}" if scaled > cap else ""))
        metrics["tg128_projected_tok_s"] = Metric(value=round(min(scaled, cap), 4), unit="tok/s",
                                                  status="projected", note=note)
    else:
        metrics["tg128_projected_tok_s"] = unknown("tok/s", "no host tg128 measurement to project from")
    peak = host.get("peak_rss_mb")
    if peak is not None and peak.value is not None:
        metrics.update(memory_metrics(int(peak.value * 1e6), profile.app_memory_gb))
        metrics["peak_rss_mb"] = metrics["peak_rss_mb"].model_copy(update={"note": "measured on the host"})
    for name in CARRIED:
        if name in host:
            m = host[name]
            metrics[name] = m if m.value is None else m.model_copy(
                update={"note": "; ".join(filter(None, [m.note, "measured on the host"]))})
    for name, unit in NOT_PROJECTED.items():
        metrics[name] = unknown(unit, NOT_PROJECTED_WHY)
    notes = []
    if profile.cpu.cores > threads:
        notes.append(f"the host has {threads} cores for the profile's {profile.cpu.cores}; "
                     "the projection assumes decode stays bandwidth-bound")
    if bundle_format not in profile.formats:
        notes.append(f"{profile.name} prefers {'/'.join(profile.formats)}; this bundle is {bundle_format}")
    emulation = Emulation(profile=profile.name, threads_cap=threads, host_bandwidth_gbs=round(host_bandwidth_gbs, 3),
                          profile_bandwidth_gbs=profile.memory_bandwidth_gbs, bandwidth_ratio=round(ratio, 4),
                          method=METHOD, host_bandwidth_probes=len(bandwidth.samples),
                          host_bandwidth_range_gbs=[round(v, 3) for v in bandwidth.spread])
    return metrics, emulation, notes
