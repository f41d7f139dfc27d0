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

from slmforge.fileio import atomic_write_text
from slmforge.profiles import DeviceProfile, detect_host_profile, load_profile, measure_memory_bandwidth_gbs


def profile_ref(profile: DeviceProfile) -> ProfileRef:
    return ProfileRef(name=profile.name, detected=profile.detected, cores=profile.cpu.cores,
                      app_memory_gb=profile.app_memory_gb, memory_bandwidth_gbs=profile.memory_bandwidth_gbs,
                      target_decode_tok_s=profile.target_decode_tok_s)


@dataclass
class Campaign:
    device: DeviceProfile
    facts: DeviceFacts
    host_bandwidth_gbs: float
    threads: int
    emulated: list[DeviceProfile]
    run_id: str = field(default_factory=new_run_id)

    @classmethod
    def prepare(cls, profile_name: str | None, emulate_names: list[str], threads: int | None) -> Campaign:
        """Profiles resolved and the host measured before any model loads (bad names fail fast)."""
        emulated = [load_profile(name) for name in emulate_names]
        if profile_name and profile_name != "host":
            device = load_profile(profile_name)
            host_bw = measure_memory_bandwidth_gbs()
        else:
            device = detect_host_profile()
            host_bw = device.memory_bandwidth_gbs
        facts = device_facts()
        chosen = threads or min(facts.cores_physical, device.cpu.cores)
        return cls(device, facts, host_bw, chosen, emulated)

    def thread_counts(self) -> list[int]:
        caps = {threads_cap(p, self.facts.cores_physical) for p in self.emulated}
        return [self.threads, *sorted(caps - {self.threads})]

    def run(self, bundles: Sequence[Path], out: Path, append: bool, repeats: int, qa: Path | None, qa_limit: int,
            heldout: Path | None, ppl_tokens: int, k: int, question: str | None) -> list[BenchRecord]:
        previous = out.read_text() if append and out.is_file() else ""
        records: list[BenchRecord] = []
        for path in bundles:
            by_threads: dict[int, BundleResult] = {}
            for n in self.thread_counts():
                job = BundleJob(path=str(path), threads=n, repeats=repeats, bandwidth_gbs=self.host_bandwidth_gbs,
                                app_memory_gb=self.device.app_memory_gb, k=k, question=question or DEFAULT_QUESTION,
                                heldout=str(heldout) if heldout else None, ppl_tokens=ppl_tokens,
                                qa=str(qa) if qa else None, qa_limit=qa_limit, quality=not by_threads)
                print(f"bench: {path.name} at {n} thread(s)", file=sys.stderr)
                by_threads[n] = run_in_subprocess(job)
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
            metrics, emulation, notes = emulate(profile, at_n, self.host_bandwidth_gbs, result.weight_bytes, n,
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

