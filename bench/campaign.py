"""One `bench run`: every bundle at every thread count it needs, turned into records.

The host is measured once per (bundle, threads); emulated profiles reuse the measurement at
their capped thread count, so three profiles that all cap to the host's cores cost one run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge.bench.bandwidth import PROBES_AT_START, PROBES_BETWEEN_BUNDLES, BandwidthSampler
from slmforge.bench.emulate import emulate, threads_cap
from slmforge.bench.records import (
    BenchRecord,
    DeviceFacts,
    Metric,
    ProfileRef,
    device_facts,
    fmt,
    new_run_id,
    now_iso,
)
from slmforge.bench.run_bundle import DEFAULT_QUESTION, BundleJob, BundleResult, run_in_subprocess

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_text
from slmforge.profiles import DeviceProfile, detect_host_profile, load_profile

QUALITY_METRICS = ("perplexity", "qa_token_f1")


def profile_ref(profile: DeviceProfile) -> ProfileRef:
    return ProfileRef(name=profile.name, detected=profile.detected, cores=profile.cpu.cores,
                      app_memory_gb=profile.app_memory_gb, memory_bandwidth_gbs=profile.memory_bandwidth_gbs,
                      target_decode_tok_s=profile.target_decode_tok_s)


@dataclass
class Campaign:
    device: DeviceProfile
    facts: DeviceFacts
    bandwidth: BandwidthSampler
    threads: int
    emulated: list[DeviceProfile]
    run_id: str = field(default_factory=new_run_id)

    @classmethod
    def prepare(cls, profile_name: str | None, emulate_names: list[str], threads: int | None) -> Campaign:
        """Profiles resolved and the host measured before any model loads (bad names fail fast)."""
        emulated = [load_profile(name) for name in emulate_names]
        device = load_profile(profile_name) if profile_name and profile_name != "host" else detect_host_profile()
        bandwidth = BandwidthSampler()
        bandwidth.sample(PROBES_AT_START)
        facts = device_facts()
        chosen = threads or min(facts.cores_physical, device.cpu.cores)
        return cls(device, facts, bandwidth, chosen, emulated)

    def thread_counts(self) -> list[int]:
        caps = {threads_cap(p, self.facts.cores_physical) for p in self.emulated}
        return [self.threads, *sorted(caps - {self.threads})]

    def run(self, bundles: Sequence[Path], out: Path, append: bool, repeats: int, qa: Path | None, qa_limit: int,
            heldout: Path | None, ppl_tokens: int, k: int, question: str | None) -> list[BenchRecord]:
        previous = out.read_text() if append and out.is_file() else ""
        records: list[BenchRecord] = []
        quality_by_identity: dict[str, tuple[str, dict[str, Any]]] = {}
        for path in bundles:
            identity = quality_identity(path)
            earlier = quality_by_identity.get(identity) if identity else None
            by_threads: dict[int, BundleResult] = {}
            for n in self.thread_counts():
                job = BundleJob(path=str(path), threads=n, repeats=repeats, bandwidth_gbs=self.bandwidth.median,
                                bandwidth_note=self.bandwidth.describe(),
                                app_memory_gb=self.device.app_memory_gb, k=k, question=question or DEFAULT_QUESTION,
                                heldout=str(heldout) if heldout else None, ppl_tokens=ppl_tokens,
                                qa=str(qa) if qa else None, qa_limit=qa_limit,
                                quality=not by_threads and earlier is None)
                print(f"bench: {path.name} at {n} thread(s)", file=sys.stderr)
                by_threads[n] = run_in_subprocess(job)
            main = by_threads[self.threads]
            if earlier is not None:
                copy_quality(main, *earlier)
            elif identity:
                quality_by_identity[identity] = (path.name, main.metrics)
            self.bandwidth.sample(PROBES_BETWEEN_BUNDLES)
            records.extend(self.records_for(by_threads, repeats))
            text = previous + "".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in records)
            atomic_write_text(out, text)  # after each bundle: an interrupted campaign keeps whole records
        return records

    def records_for(self, by_threads: dict[int, BundleResult], repeats: int) -> list[BenchRecord]:
        main = by_threads[self.threads]
        common: dict[str, Any] = {"run_id": self.run_id, "created": now_iso(), "device": self.facts,
                                  "repeats": repeats}
        host_metrics = {k: Metric(**v) for k, v in main.metrics.items()}
        records = [BenchRecord(mode="measured", profile=profile_ref(self.device), bundle=main.bundle,
                               threads=self.threads, metrics=host_metrics, errors=main.errors, **common)]
        for profile in self.emulated:
            n = threads_cap(profile, self.facts.cores_physical)
            result = by_threads[n]
            at_n = {k: Metric(**v) for k, v in result.metrics.items()}
            for name, metric in host_metrics.items():  # quality is measured once, in the main run
                at_n.setdefault(name, metric)
            if result.weight_bytes is None:  # nothing measured at this thread count to emulate from
                records[0].notes.append(f"--emulate {profile.name}: no host measurement at {n} threads "
                                        f"({'; '.join(result.errors) or 'worker failed'})")
                continue
            metrics, emulation, notes = emulate(profile, at_n, self.bandwidth, result.weight_bytes, n,
                                                str(result.bundle.get("format")))
            records.append(BenchRecord(mode="emulated", profile=profile_ref(profile), emulation=emulation,
                                       bundle=result.bundle, threads=n, metrics=metrics, errors=result.errors,
                                       notes=notes, **common))
        return records

    @staticmethod
    def summary(records: list[BenchRecord]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """A short terminal table; the full picture is in `bench report`."""
        headers = ("bundle", "device", "pp512 tok/s", "tg128 tok/s", "TTFT ms", "peak MB", "ppl", "hit@k", "F1")
        rows = []
        for r in records:
            device = r.profile.name + (" (emulated)" if r.mode == "emulated" else "")
            rows.append((r.bundle.name, device, fmt(r.metrics.get("pp512_tok_s")),
                         fmt(r.metrics.get("tg128_tok_s") if r.mode == "measured"
                             else r.metrics.get("tg128_projected_tok_s")),
                         fmt(r.metrics.get("rag_ttft_ms")), fmt(r.metrics.get("peak_rss_mb")),
                         fmt(r.metrics.get("perplexity")), fmt(r.metrics.get("faq_hit_at_k")),
                         fmt(r.metrics.get("qa_token_f1"))))
        return headers, rows



def quality_identity(path: Path) -> str | None:
    """What decides a bundle's quality figures: model file, index content and settings, generation.

    Profiles that ship the same model and index differ only in context size and threads; their
    perplexity and QA F1 are measured once (speed and memory are still measured per bundle)."""
    from slmforge.runtime.bundle.reader import read_bundle_manifest

    if not path.is_dir():
        return None  # a .tar bundle or a bare model: measured on its own
    try:
        m = read_bundle_manifest(path)
    except UserError:
        return None  # the worker reports an unreadable bundle itself
    index = {k: v for k, v in m.index.items() if k not in ("path", "updated")}
    key = {"model": m.model.get("sha256"), "index": index, "generation": m.generation,
           "system_prompt": m.system_prompt, "embedder": m.embedder.model_dump(mode="json")}
    return json.dumps(key, sort_keys=True)


def copy_quality(result: BundleResult, source_name: str, source: dict[str, Any]) -> None:
    """Carry quality figures over from an identical bundle, saying where they were measured."""
    for name in QUALITY_METRICS:
        if name in source:
            metric = dict(source[name])
            metric["note"] = "; ".join(filter(None, [metric.get("note"),
                                                     f"measured on {source_name} (same model, index and generation)"]))
            result.metrics[name] = metric
