"""The results schema of `slmforge bench run`: one JSON line per bundle per device (or emulated profile).

Every number is a ``Metric`` that says how it was obtained (``measured``, ``projected``)
or why it is absent (``unknown``, ``skipped``, ``failed``), so a report can never show a
projection or a missing value as a measurement. Records also carry the device facts
llama-bench prints (cpu, cores, threads, libraries) so runs from many devices compare.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import uuid
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slmforge import __version__
from slmforge.errors import UserError

SCHEMA_VERSION = 1
RECORD_KIND = "slmforge-bench"

Status = Literal["measured", "projected", "unknown", "skipped", "failed"]
HAS_VALUE: frozenset[str] = frozenset({"measured", "projected"})

# name -> (unit, higher is better, what it is). The report's rows follow this order.
METRICS: dict[str, tuple[str, bool | None, str]] = {
    "load_ms": ("ms", False, "open the bundle and load the model"),
    "pp512_tok_s": ("tok/s", True, "prefill of 512 tokens in one batch (llama-bench pp512)"),
    "tg128_tok_s": ("tok/s", True, "decode of 128 tokens one by one from an empty context (llama-bench tg128)"),
    "tg128_projected_tok_s": ("tok/s", True, "tg128 projected to a profile by bandwidth ratio (emulation only)"),
    "rag_ttft_ms": ("ms", False, "time to first token of a RAG answer (embed + search + prefill)"),
    "rag_decode_tok_s": ("tok/s", True, "decode speed after the first token of a RAG answer"),
    "retrieval_p50_ms": ("ms", False, "embed + search of one question, median"),
    "retrieval_p95_ms": ("ms", False, "embed + search of one question, 95th percentile"),
    "peak_rss_mb": ("MB", False, "peak resident memory of the bench process for this bundle"),
    "app_memory_mb": ("MB", None, "the profile's app memory budget"),
    "rss_share_of_budget": ("ratio", False, "peak RSS / app memory budget (> 1 does not fit)"),
    "memory_bandwidth_gbs": ("GB/s", True, "copy bandwidth measured on the host (read + write)"),
    "bytes_per_token_mb": ("MB", False, "weight bytes read per decoded token"),
    "decode_ceiling_tok_s": ("tok/s", True, "bandwidth / bytes read per token"),
    "decode_share_of_ceiling": ("ratio", True, "tg128 / decode ceiling"),
    "energy_j_per_token": ("J/token", False, "energy of tg128 per token (RAPL or battery)"),
    "perplexity": ("ppl", False, "held-out perplexity through the bundle's own backend"),
    "faq_hit_at_k": ("ratio", True, "FAQ questions whose answer section is among the top k chunks"),
    "qa_token_f1": ("F1", True, "token F1 of answers against reference answers (--qa)"),
}


class Metric(BaseModel):
    """One number with its provenance; absent numbers say why."""

    model_config = ConfigDict(extra="forbid")
    value: float | None = None
    std: float | None = None
    n: int | None = Field(default=None, description="how many repeats/samples the value summarizes")
    unit: str
    status: Status
    note: str | None = None

    @model_validator(mode="after")
    def _value_matches_status(self) -> Metric:
        if self.status in HAS_VALUE and self.value is None:
            raise ValueError(f"a {self.status} metric needs a value")
        if self.status not in HAS_VALUE and (self.value is not None or not self.note):
            raise ValueError(f"a {self.status} metric has no value and needs a note saying why")
        return self


class DeviceFacts(BaseModel):
    """The machine the numbers were taken on (always the real host, also when emulating)."""

    model_config = ConfigDict(extra="allow")
    hostname: str
    cpu_model: str
    cores_physical: int
    cores_logical: int
    ram_gb: float
    os: str
    machine: str
    python: str
    libraries: dict[str, str]
    cpu_features: str | None = None
    load_avg_1m: float | None = Field(default=None, description="1-minute load average when the run started")
    env: dict[str, str] = Field(default_factory=dict, description="threading variables that change speed")


class ProfileRef(BaseModel):
    """The device profile the record is judged against (detected host, named device, or emulated)."""

    model_config = ConfigDict(extra="allow")
    name: str
    detected: bool
    cores: int
    app_memory_gb: float
    memory_bandwidth_gbs: float
    target_decode_tok_s: float


class Emulation(BaseModel):
    """How a profile was emulated on the host. Projected numbers are never measurements."""

    model_config = ConfigDict(extra="forbid")
    label: Literal["projection"] = "projection"
    profile: str
    threads_cap: int
    host_bandwidth_gbs: float
    profile_bandwidth_gbs: float
    bandwidth_ratio: float
    method: str
    host_bandwidth_probes: int | None = None  # schema 1 records predate the sampler
    host_bandwidth_range_gbs: list[float] | None = None


class BundleInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    path: str
    name: str
    format: str
    quant: str
    model_bytes: int
    model_sha256: str | None = None
    built_for_profile: str | None = None
    base_model: str | None = None  # the imported base model's name: reports set models side by side
    gate: dict[str, Any] | None = None  # export's quality gate for this file: gate, ppl_ratio, kl_mean, top1_agreement


class BenchRecord(BaseModel):
    """One line of results.jsonl."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    kind: Literal["slmforge-bench"] = RECORD_KIND
    run_id: str
    created: str
    tool: str = f"slmforge {__version__}"
    mode: Literal["measured", "emulated"]
    device: DeviceFacts
    profile: ProfileRef
    emulation: Emulation | None = None
    bundle: BundleInfo
    threads: int
    repeats: int
    metrics: dict[str, Metric]
    errors: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _projections_only_when_emulated(self) -> BenchRecord:
        projected = [k for k, m in self.metrics.items() if m.status == "projected"]
        if projected and self.mode != "emulated":
            raise ValueError(f"projected metrics {projected} in a measured record")
        if (self.mode == "emulated") != (self.emulation is not None):
            raise ValueError("an emulated record needs its 'emulation' block, and only it")
        return self


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def measured(value: float, unit: str, std: float | None = None, n: int | None = None,
             note: str | None = None) -> Metric:
    return Metric(value=round(float(value), 4), std=None if std is None else round(float(std), 4), n=n,
                  unit=unit, status="measured", note=note)


def unknown(unit: str, why: str, status: Status = "unknown") -> Metric:
    return Metric(unit=unit, status=status, note=why)


SPEED_ENV = ("OMP_", "GGML_", "LLAMA_", "ORT_", "OPENBLAS_", "MKL_")
LIBRARIES = ("slmforge", "llama_cpp_python", "onnxruntime", "onnxruntime-genai", "numpy", "sqlite-vec",
             "tokenizers", "psutil")


def library_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_facts() -> DeviceFacts:
    """Facts about this machine, read now (psutil, /proc/cpuinfo, package metadata)."""
    import psutil

    from slmforge.profiles import _cpu_isa, cpu_model

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return DeviceFacts(
        hostname=platform.node(),
        cpu_model=cpu_model(),
        cores_physical=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        cores_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_gb=round(psutil.virtual_memory().total / 1e9, 2),
        os=f"{platform.system()} {platform.release()}",
        machine=platform.machine(),
        python=sys.version.split()[0],
        libraries=library_versions(),
        cpu_features=" ".join(_cpu_isa()),
        load_avg_1m=None if load is None else round(load, 2),
        env={k: v for k, v in os.environ.items() if k.startswith(SPEED_ENV)},
    )


def validate_record(obj: dict[str, Any]) -> BenchRecord:
    """Check one record against the current schema (raises ``ValidationError``)."""
    return BenchRecord.model_validate(obj)


def append_records(path: Path, records: Iterable[BenchRecord]) -> None:
    """Append whole lines (one write per record) so an interrupted run leaves only whole records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.model_dump(mode="json"), sort_keys=False) + "\n")
            handle.flush()


class LoadedRecord(BaseModel):
    """A record as read back for a report: the raw dict plus what is wrong or missing with it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    raw: dict[str, Any]
    source: str
    valid: bool
    problems: list[str] = Field(default_factory=list)


def read_records(paths: Iterable[Path]) -> list[LoadedRecord]:
    """Every JSON object line of ``paths``, validated where it is our current schema; others kept, flagged."""
    loaded: list[LoadedRecord] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: results file not found; pass the --out file of 'slmforge bench run'")
        for lineno, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{p.name}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                loaded.append(LoadedRecord(raw={}, source=where, valid=False, problems=["not JSON; line skipped"]))
                continue
            if not isinstance(obj, dict):
                loaded.append(LoadedRecord(raw={}, source=where, valid=False, problems=["not an object; skipped"]))
                continue
            loaded.append(_check(obj, where))
    return loaded


def _check(obj: dict[str, Any], where: str) -> LoadedRecord:
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION:
        return LoadedRecord(raw=obj, source=where, valid=False,
                            problems=[(f"schema_version {version!r} (this report reads {SCHEMA_VERSION}); "
                                       "fields it does not know are ignored, missing ones shown as gaps")])
    try:
        validate_record(obj)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]]
        return LoadedRecord(raw=obj, source=where, valid=False, problems=problems)
    return LoadedRecord(raw=obj, source=where, valid=True)


def fmt(metric: Metric | None) -> str:
    """A metric as text: '12.3 ± 0.4', '12.3 (projected)', or '—' / 'failed' for a gap."""
    if metric is None:
        return "—"
    if metric.value is None:
        return "failed" if metric.status == "failed" else "—"
    value = metric.value
    text = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    if metric.std:
        text += f" ± {metric.std:.2g}" if metric.std < 10 else f" ± {metric.std:.0f}"
    if metric.status == "projected":
        text += " (projected)"
    return text


def results_line(path: Path) -> str | None:
    """One line for the pipeline table from a results file: the first bundle measured on this host, speed and quality."""
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("mode") == "measured":
            metrics = row.get("metrics", {})
            tg, pp = metrics.get("tg128_tok_s", {}).get("value"), metrics.get("pp512_tok_s", {}).get("value")
            if tg and pp:
                ppl, f1 = (metrics.get(name, {}).get("value") for name in ("perplexity", "qa_token_f1"))
                quality = "".join([f", ppl {ppl:.2f}" if ppl else "", f", QA F1 {f1:.3f}" if f1 is not None else ""])
                return f"{row['bundle']['name']} on this host: pp512 {pp:.0f} tok/s, tg128 {tg:.1f} tok/s{quality}"
    return None
