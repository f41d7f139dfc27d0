"""Device profiles: one YAML per target device (data, not code), plus the detected host."""

from __future__ import annotations

import os
import platform
import time
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slmforge.errors import UserError
from slmforge.schema import load_model

Format = Literal["gguf", "onnx"]


class CpuSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    cores: int = Field(gt=0)
    threads: int = Field(gt=0)
    isa: list[str] = Field(min_length=1, description="e.g. arm64, neon, dotprod, i8mm, x86_64, avx2, avx512")


class QualityBounds(BaseModel):
    """Largest perplexity ratio (exported / source) the quality gate accepts; the mean KL (source || exported)
    must stay within ln of the same bound (export/quality.py: kl_bound)."""

    model_config = ConfigDict(extra="forbid")
    max_ppl_ratio_low_bit: float = Field(default=1.10, gt=1.0, description="quants of 4 bits or fewer")
    max_ppl_ratio_8bit: float = Field(default=1.02, gt=1.0, description="8-bit quants and above")
    max_ppl_ratio_mid_bit: float = Field(default=1.05, gt=1.0, description="5- and 6-bit quants")


class RuntimeTuning(BaseModel):
    """What llama.cpp and the answer path use on this device, where its CPU or memory wants other than the
    runtime's defaults (docs/runtime-tuning.md: what each knob did, measured); unset fields keep the defaults."""

    model_config = ConfigDict(extra="forbid")
    n_batch: int | None = Field(default=None, gt=0, description="logical batch of a prefill, tokens")
    n_ubatch: int | None = Field(default=None, gt=0, description="physical batch: sets the compute buffer's size")
    flash_attn: bool | None = None
    kv_type: Literal["f16", "q8_0"] | None = Field(default=None, description="KV cache type (q8_0 needs flash_attn)")
    context_tokens: int | None = Field(default=None, gt=0, description="retrieved context's budget, tokens")


class DeviceProfile(BaseModel):
    """What a device can hold and how fast it can read memory; figures cite sources."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    ram_gb: float = Field(gt=0)
    app_memory_gb: float = Field(gt=0, description="memory one app may really use (OS and limits taken off)")
    cpu: CpuSpec
    memory_bandwidth_gbs: float = Field(gt=0, description="sustained memory bandwidth, GB/s")
    accelerator: str | None = None
    formats: list[Format] = Field(min_length=1, description="preferred model formats, best first")
    max_context: int = Field(gt=0)
    target_decode_tok_s: float = Field(gt=0)
    parallel: int = Field(default=1, ge=1, le=64,
                          description="answers `serve` generates at once in one batched llama.cpp context")
    power_envelope_w: float | None = Field(default=None, gt=0)
    quality_gate: QualityBounds = Field(default_factory=QualityBounds)
    quant_policy: Literal["quality", "footprint"] = Field(
        default="quality", description="quality: the best quantization that fits; footprint: the smallest that fits "
        "and passes the quality gate (phones, whose OS kills the largest apps first and whose battery pays per byte read)")
    runtime: RuntimeTuning = Field(default_factory=RuntimeTuning)
    sources: list[str] = Field(min_length=1)
    notes: str | None = None
    detected: bool = Field(default=False, description="true for the host profile measured at run time")

    @model_validator(mode="after")
    def _app_memory_within_ram(self) -> DeviceProfile:
        if self.app_memory_gb > self.ram_gb:
            raise ValueError(f"app_memory_gb ({self.app_memory_gb}) exceeds ram_gb ({self.ram_gb})")
        return self

    @property
    def app_memory_bytes(self) -> int:
        return int(self.app_memory_gb * 1e9)


def _profile_dir() -> Path:
    return Path(str(resources.files("slmforge.device_profiles")))


def profile_paths() -> dict[str, Path]:
    """Shipped profiles by name (file stem)."""
    return {p.stem: p for p in sorted(_profile_dir().glob("*.yaml"))}


def load_profile_file(path: str | Path) -> DeviceProfile:
    profile = load_model(DeviceProfile, path)
    if Path(path).stem != profile.name:
        raise UserError(f"{path}: field 'name': '{profile.name}' must equal the file name '{Path(path).stem}'")
    return profile


def list_profiles(include_host: bool = True) -> list[DeviceProfile]:
    profiles = [load_profile_file(p) for p in profile_paths().values()]
    if include_host:
        profiles.append(detect_host_profile())
    return profiles


def load_profile(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name, ``host``, or a YAML file path (how users add a device)."""
    if name_or_path == "host":
        return detect_host_profile()
    paths = profile_paths()
    if name_or_path in paths:
        return load_profile_file(paths[name_or_path])
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return load_model(DeviceProfile, candidate)
    known = ", ".join([*paths, "host"])
    raise UserError(f"unknown device profile '{name_or_path}'; known: {known} (or pass a profile YAML path)")


def measure_memory_bandwidth_gbs(size_mb: int = 128, repeats: int = 5) -> float:
    """Best-of-N copy bandwidth (read + write bytes per second), like STREAM's copy."""
    import numpy as np

    src = np.ones(size_mb * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Every instruction-set flag the CPU advertises (``/proc/cpuinfo`` flags/features; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("flags", "features")):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def _cpu_isa() -> list[str]:
    machine = platform.machine().lower()
    isa = ["arm64"] if machine in ("arm64", "aarch64") else [machine]
    wanted = ["avx2", "avx512f", "avx_vnni", "fma", "f16c", "neon", "asimd", "asimddp", "i8mm", "sve"]
    flags = cpu_flags()
    return isa + [f for f in wanted if f in flags]


# `serve --parallel` on the machine itself (and for a custom profile that is not on the device): four answers
# at a time, as the laptop profile; docs/runtime-tuning.md ("Several users at once") has the figures behind it
HOST_PARALLEL = 4


def detect_host_profile() -> DeviceProfile:
    """This machine, measured now with psutil and a short copy test."""
    import psutil

    vm = psutil.virtual_memory()
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    threads = psutil.cpu_count(logical=True) or cores
    return DeviceProfile(
        name="host",
        description=f"this machine ({platform.system()} {platform.machine()}), detected at run time",
        ram_gb=round(vm.total / 1e9, 2),
        app_memory_gb=round(vm.available / 1e9, 2),
        cpu=CpuSpec(model=cpu_model(), cores=cores, threads=threads, isa=_cpu_isa()),
        memory_bandwidth_gbs=round(measure_memory_bandwidth_gbs(), 2),
        accelerator=None,
        formats=["gguf", "onnx"],
        max_context=8192,
        target_decode_tok_s=20,
        parallel=HOST_PARALLEL,
        power_envelope_w=None,
        sources=["measured: psutil.virtual_memory(), psutil.cpu_count(), numpy copy test"],
        detected=True,
    )
