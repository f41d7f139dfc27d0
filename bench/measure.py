"""Speed, memory, bandwidth and energy of one model on this machine, comparable with llama-bench.

pp512 is one batch of 512 random tokens from an empty context; tg128 is 128 single-token
steps from an empty context; both as mean ± std of tokens/s over repeats after one warm-up,
as llama-bench reports them. Energy comes only from counters the platform exposes: it is
recorded as unknown, never estimated, everywhere else.
"""

from __future__ import annotations

import glob
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from slmforge.bench.records import Metric, measured, unknown
from tqdm import tqdm

PP_TOKENS = 512
TG_TOKENS = 128
WARMUP_TOKENS = 16


class SpeedProbe(Protocol):
    """Direct access to a backend's library, without our generation loop (what llama-bench times)."""

    weight_bytes: int
    vocab_size: int

    def prefill(self, tokens: list[int]) -> float: ...

    def decode(self, tokens: list[int]) -> float: ...


class LlamaCppProbe:
    """Times llama.cpp's decode directly on a loaded ``llama_cpp.Llama``."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.weight_bytes = int(llm._model.size())
        self.vocab_size = int(llm.n_vocab())

    def prefill(self, tokens: list[int]) -> float:
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(tokens)
        return time.perf_counter() - start

    def decode(self, tokens: list[int]) -> float:
        self.llm.reset()
        start = time.perf_counter()
        for token in tokens:
            self.llm.eval([token])
        return time.perf_counter() - start


class GenaiProbe:
    """Times onnxruntime-genai directly: ``append_tokens`` for prefill, ``generate_next_token`` for decode."""

    def __init__(self, model: Any, model_dir: Path, vocab_size: int) -> None:
        self.model = model
        self.weight_bytes = sum(p.stat().st_size for p in Path(model_dir).glob("*.onnx*"))
        self.vocab_size = vocab_size

    def _generator(self, max_length: int) -> Any:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        return og.Generator(self.model, params)

    def prefill(self, tokens: list[int]) -> float:
        generator = self._generator(len(tokens) + 1)
        start = time.perf_counter()
        generator.append_tokens(np.asarray(tokens, dtype=np.int32))
        return time.perf_counter() - start

    def decode(self, tokens: list[int]) -> float:
        generator = self._generator(len(tokens) + 2)
        generator.append_tokens(np.asarray(tokens[:1], dtype=np.int32))
        start = time.perf_counter()
        for _ in tokens:
            generator.generate_next_token()
        return time.perf_counter() - start


def probe_for(backend: Any) -> SpeedProbe:
    """The library object under a runtime backend (llama.cpp ``Llama`` or onnxruntime-genai ``Model``)."""
    if backend.name == "llama.cpp":
        return LlamaCppProbe(backend._llm)
    if backend.name == "onnxruntime-genai":
        import json

        config = json.loads((Path(backend.model_dir) / "genai_config.json").read_text())
        return GenaiProbe(backend._model, backend.model_dir, int(config["model"]["vocab_size"]))
    raise ValueError(f"no speed probe for backend {backend.name!r}")


def random_tokens(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """Random token ids like llama-bench's (speed does not depend on content); skips the first 16 specials."""
    rng = np.random.default_rng(seed)
    return rng.integers(16, vocab_size, size=n).tolist()


def rate(samples: list[float], tokens: int, unit: str = "tok/s", note: str | None = None) -> Metric:
    """mean ± std of tokens/s over timed repeats (seconds per repeat)."""
    rates = [tokens / s for s in samples if s > 0]
    std = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return measured(statistics.fmean(rates), unit, std=std, n=len(rates), note=note)


def speed(probe: SpeedProbe, repeats: int, label: str = "") -> dict[str, Metric]:
    """pp512 and tg128 as llama-bench measures them (one warm-up of each first)."""
    pp = random_tokens(probe.vocab_size, PP_TOKENS, seed=1)
    tg = random_tokens(probe.vocab_size, TG_TOKENS, seed=2)
    probe.prefill(pp[:WARMUP_TOKENS])
    probe.decode(tg[:WARMUP_TOKENS])
    pp_times: list[float] = []
    tg_times: list[float] = []
    for _ in tqdm(range(repeats), desc=f"pp512+tg128 {label}".strip(), unit="rep", file=sys.stderr,
                  leave=False):
        pp_times.append(probe.prefill(pp))
        tg_times.append(probe.decode(tg))
    return {"pp512_tok_s": rate(pp_times, PP_TOKENS), "tg128_tok_s": rate(tg_times, TG_TOKENS)}


def percentile_metrics(latencies_ms: list[float], prefix: str) -> dict[str, Metric]:
    """p50 and p95 of a list of latencies (ms)."""
    if not latencies_ms:
        why = "no questions to time"
        return {f"{prefix}_p50_ms": unknown("ms", why, "skipped"), f"{prefix}_p95_ms": unknown("ms", why, "skipped")}
    arr = np.asarray(latencies_ms)
    n = len(latencies_ms)
    return {f"{prefix}_p50_ms": measured(np.percentile(arr, 50), "ms", n=n),
            f"{prefix}_p95_ms": measured(np.percentile(arr, 95), "ms", n=n)}


def time_to_first_delta(stream: Iterable[str]) -> tuple[float, int]:
    """Milliseconds until a stream yields its first text, then drain it; returns (ttft_ms, deltas)."""
    start = time.perf_counter()
    first: float | None = None
    count = 0
    for _ in stream:
        if first is None:
            first = time.perf_counter()
        count += 1
    end = first if first is not None else time.perf_counter()
    return (end - start) * 1000, count


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (the bench runs each bundle in its own process).

    Linux: VmHWM of this address space; ru_maxrss would also carry the forked parent's pre-exec peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def memory_metrics(peak_bytes: int, app_memory_gb: float) -> dict[str, Metric]:
    budget = app_memory_gb * 1e9
    note = "fits" if peak_bytes <= budget else "DOES NOT FIT the profile's app memory"
    return {
        "peak_rss_mb": measured(peak_bytes / 1e6, "MB"),
        "app_memory_mb": measured(budget / 1e6, "MB", note="from the device profile"),
        "rss_share_of_budget": measured(peak_bytes / budget, "ratio", note=note),
    }


def ceiling_metrics(weight_bytes: int, bandwidth_gbs: float, tg128: Metric | None,
                    status: str = "measured") -> dict[str, Metric]:
    """Decode is bandwidth-bound: every token reads all weights once, so tok/s ≤ bandwidth ÷ bytes per token."""
    ceiling = bandwidth_gbs * 1e9 / weight_bytes
    source = "host copy test" if status == "measured" else "profile's memory_bandwidth_gbs"
    out = {
        "bytes_per_token_mb": measured(weight_bytes / 1e6, "MB", note="weight bytes of the model file"),
        "decode_ceiling_tok_s": (measured(ceiling, "tok/s", note=f"bandwidth from the {source}")
                                 if status == "measured" else
                                 Metric(value=round(ceiling, 4), unit="tok/s", status="projected",
                                        note=f"bandwidth from the {source}")),
    }
    if tg128 is not None and tg128.value is not None and status == "measured":
        out["decode_share_of_ceiling"] = measured(tg128.value / ceiling, "ratio")
    return out


# -- energy -------------------------------------------------------------------------------------------------

RAPL_GLOB = "/sys/class/powercap/intel-rapl:*"
BATTERY_GLOB = "/sys/class/power_supply/BAT*"


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


class EnergyMeter:
    """Joules spent between ``start`` and ``stop`` from RAPL package counters or a discharging battery."""

    def __init__(self) -> None:
        self.source: str | None = None
        self.why = ""
        self._read: Callable[[], float | None] | None = None
        self._wrap = 0.0
        self._choose()
        self._start: float | None = None

    def _choose(self) -> None:
        packages = [d for d in sorted(glob.glob(RAPL_GLOB))
                    if Path(d, "name").is_file() and Path(d, "name").read_text().startswith("package")]
        if packages:
            if all(_read_int(f"{d}/energy_uj") is not None for d in packages):
                self.source = "RAPL package counters"
                self._wrap = sum((_read_int(f"{d}/max_energy_range_uj") or 0) for d in packages) / 1e6
                self._read = lambda: sum(_read_int(f"{d}/energy_uj") or 0 for d in packages) / 1e6
                return
            self.why = "RAPL counters exist but are not readable (root only on this system)"
            return
        for bat in sorted(glob.glob(BATTERY_GLOB)):
            status = Path(bat, "status").read_text().strip() if Path(bat, "status").is_file() else ""
            if _read_int(f"{bat}/energy_now") is None:
                continue
            if status != "Discharging":
                self.why = f"battery present but {status.lower() or 'not discharging'} (on AC power)"
                return
            self.source = "battery energy_now (coarse)"
            self._read = lambda path=f"{bat}/energy_now": -(_read_int(path) or 0) * 3.6e-3  # µWh → J, as it falls
            return
        self.why = "no RAPL counters under /sys/class/powercap and no discharging battery on this platform"

    def start(self) -> None:
        self._start = self._read() if self._read else None

    def stop(self) -> float | None:
        if self._read is None or self._start is None:
            return None
        delta = self._read() - self._start
        if delta < 0 and self._wrap:
            delta += self._wrap
        return delta if delta > 0 else None


def energy_per_token(meter: EnergyMeter, run: Callable[[], int]) -> Metric:
    """Run ``run`` (returns tokens produced) under the meter; J/token or unknown with the reason."""
    meter.start()
    tokens = run()
    joules = meter.stop()
    if meter.source is None:
        return unknown("J/token", meter.why)
    if joules is None or tokens <= 0:
        return unknown("J/token", f"{meter.source} did not move during the run")
    return measured(joules / tokens, "J/token", n=tokens, note=meter.source)
