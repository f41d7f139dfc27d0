"""Will this quantization run on that device? Memory and decode-speed estimates per profile.

Runtime memory = weights + KV cache + generator overhead + the runtime process, each as the runtime
really allocates it on that profile (``RuntimeMemory``):
  * KV cache from the model config: layers x kv_heads x head_dim x 2 (K and V) x bytes per value x
    positions x streams. llama.cpp's window is the fast path's on that profile (its ``max_context``
    capped at the runtime's 1,024 positions), in the profile's KV cache type (f16, or q8_0 where its
    ``runtime:`` asks), and ``serve --parallel N`` (the profile's ``parallel``) holds N + 1 more
    streams in a second context beside the lone one. onnxruntime-genai's CPU models keep float32
    (4 bytes) for the profile's whole ``max_context``, allocated up front.
  * Generator overheads were measured (docs/export.md, "Runtime overhead"): RSS after loading and
    one decode step, minus the file size and the computed KV cache; one per llama.cpp context.
  * The runtime process (Python, numpy, onnxruntime with the embedder, SQLite, the HTTP server) is
    the peak RSS of ``slmforge serve`` answering questions minus all of the above
    (bench/dev/runtime_footprint.py --serve): a base plus the embedder file. ``serve`` is what a
    device keeps running, and it holds the embedder beside the model (``run`` embeds in a child
    that exits first, so its peak is lower).
Decode speed = memory bandwidth / bytes read per token, where one token reads every weight
once plus one stream's KV cache at its full window (the worst case a user of the profile hits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from slmforge.profiles import DeviceProfile

# llama-cpp-python 0.3.36, use_mmap=False, n_batch 512, RSS minus file minus KV: SmolLM2-135M (49,152 tokens)
# 24.3-25.5 MB at n_ctx 1024/4096/8192 (Q8_0, Q4_K_M); Gemma 3 270M (262,144 tokens) 48.0 / 49.0 MB at n_ctx
# 1024 / 4096 (Q4_K_M; 45.8 MB at n_batch 64). It grows with the vocabulary (llama.cpp keeps every token's text,
# score and lookup entries, ~111 bytes a token between the two), so the estimate is a base plus a per-token term:
# 31.5 MB for SmolLM2 (measured 24-26), 58.7 MB for Gemma 3 (measured 48-49).
LLAMACPP_OVERHEAD_BASE_BYTES = 24 * 1024 * 1024
LLAMACPP_OVERHEAD_PER_TOKEN_BYTES = 128
LLAMACPP_OVERHEAD_BYTES = 32 * 1024 * 1024  # a vocabulary-less estimate (config without vocab_size)
# onnxruntime-genai 0.18 int4 CPU: 78.9 MB at max_length 1024 and 4096.
ORT_GENAI_OVERHEAD_BYTES = 96 * 1024 * 1024

# bench/dev/runtime_footprint.py --serve (bench/results/runtime_footprint_serve.json): `slmforge serve` answering three
# questions, minus model, KV, generator and the embedder file, was 190.6 / 201.1 / 191.9 MB (the quick demo's laptop
# Q8_0, phone Q4_K_M and Pi 5 Q8_0 bundles, int8 embedder; `run` on the same bundles: 49.4 / 58.5 / 49.4 MB, its
# embedder in a child) and 216.0 MB for the test bundle (fp32 embedder: its session holds more beside the file).
# Of it ~100 MB is imports (numpy 20, onnxruntime 19, fastapi 17, llama_cpp 10, pydantic 6) and ~50-70 MB the
# embedder's onnxruntime session beside its file. The base moved with the host before (`run`: 128.6 MB here, 147.0
# on the CI machine of the same kind, +14 %), so the constant sits 14 % above the highest seen. (Until 2026-12-03
# it was 160 MiB, from `run` on the path before issue #18.)
RUNTIME_BASE_BYTES = 236 * 1024 * 1024
# The int8 all-MiniLM-L6-v2 that export writes into every bundle (22.95 MB); onnxruntime holds it in memory.
DEFAULT_EMBEDDER_BYTES = 23_000_000
RUNTIME_PROCESS_BYTES = RUNTIME_BASE_BYTES + DEFAULT_EMBEDDER_BYTES

KV_BYTES_PER_VALUE = {"gguf": 2, "onnx": 4}  # llama.cpp's f16 cache; onnxruntime-genai's float32 one
KV_TYPE_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 values in 32 bytes plus an f16 scale
OVERHEAD_BYTES = {"gguf": LLAMACPP_OVERHEAD_BYTES, "onnx": ORT_GENAI_OVERHEAD_BYTES}

MB = 1e6


def kv_cache_bytes(config: dict[str, Any], n_ctx: int, bytes_per_value: int) -> int:
    """K and V for every layer at ``n_ctx`` positions."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = _head_dim(config)
    return int(config["num_hidden_layers"]) * kv_heads * head_dim * 2 * bytes_per_value * n_ctx


@dataclass
class Estimate:
    format: str
    quant: str
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    memory_bytes: int
    decode_tok_s: float
    fits_memory: bool
    fast_enough: bool
    measured: bool  # weights from the written file (True) or from nominal bits per weight (False)
    kv_plan: str = ""  # the cache the runtime allocates: positions, type and streams ("1024 q8_0", "1024 f16 x 4")

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fast_enough

    def shortfall_bytes(self, profile: DeviceProfile) -> int:
        """How much more app memory this candidate needs than the profile has (0 when it fits)."""
        return max(0, self.memory_bytes - profile.app_memory_bytes)

    def why(self, profile: DeviceProfile) -> str:
        mem = (f"est. memory {self.memory_bytes / MB:.0f} MB (weights {self.weights_bytes / MB:.0f} + KV@"
               f"{self.kv_plan or profile.max_context} {self.kv_bytes / MB:.0f} + generator {self.overhead_bytes / MB:.0f} + "
               f"runtime process {RUNTIME_PROCESS_BYTES / MB:.0f}) "
               f"{'<=' if self.fits_memory else '>'} app memory {profile.app_memory_bytes / MB:.0f} MB")
        speed = (f"est. decode {self.decode_tok_s:.1f} tok/s ({profile.memory_bandwidth_gbs} GB/s / "
                 f"{profile.memory_bandwidth_gbs * 1e3 / self.decode_tok_s:.0f} MB per token) "
                 f"{'>=' if self.fast_enough else '<'} target {profile.target_decode_tok_s:g}")
        return f"{self.quant}: {mem}; {speed}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generator_overhead_bytes(fmt: str, config: dict[str, Any]) -> int:
    """The generator's own memory beyond weights and KV cache (llama.cpp's grows with the vocabulary)."""
    if fmt == "gguf" and config.get("vocab_size"):
        return LLAMACPP_OVERHEAD_BASE_BYTES + LLAMACPP_OVERHEAD_PER_TOKEN_BYTES * int(config["vocab_size"])
    return OVERHEAD_BYTES[fmt]


@dataclass(frozen=True)
class RuntimeMemory:
    """How the runtime holds a model on a profile besides its weights: window, cache type, streams, contexts."""

    n_ctx: int
    kv_type: str
    kv_bytes_per_value: float
    kv_streams: int  # one for the lone context, N + 1 more for `serve --parallel N` (N > 1)
    contexts: int  # llama.cpp contexts, each with its own compute buffers


def runtime_memory(fmt: str, config: dict[str, Any], profile: DeviceProfile) -> RuntimeMemory:
    """What ``serve`` allocates for this model on ``profile``: the runtime's own window and cache rules."""
    if fmt != "gguf":
        return RuntimeMemory(profile.max_context, "float32", KV_BYTES_PER_VALUE[fmt], 1, 1)
    from slmforge.runtime.answer.engine import fast_path_for
    from slmforge.runtime.generate.llamacpp import QUANT_KV_BLOCK

    path = fast_path_for(profile)
    kv_type = path.llama.kv_type
    if kv_type != "f16" and _head_dim(config) % QUANT_KV_BLOCK:
        kv_type = "f16"  # llamacpp.kv_type_for: llama.cpp refuses a quantized cache for such heads
    return RuntimeMemory(int(path.max_n_ctx or profile.max_context), kv_type, KV_TYPE_BYTES_PER_VALUE[kv_type],
                         *serve_streams(profile.parallel))


def serve_streams(parallel: int) -> tuple[int, int]:
    """(KV streams, llama.cpp contexts) of ``serve --parallel N``: the lone context, and for N > 1 a batched one
    with N + 1 streams (each answer's and the kept prefix's)."""
    return (1 + parallel + 1, 2) if parallel > 1 else (1, 1)


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or int(config["hidden_size"]) // int(config["num_attention_heads"]))


def estimate(fmt: str, quant: str, weights_bytes: int, config: dict[str, Any], profile: DeviceProfile,
             measured: bool = True) -> Estimate:
    """Memory and decode speed of one candidate on one profile, as ``serve`` runs it there."""
    plan = runtime_memory(fmt, config, profile)
    stream = int(kv_cache_bytes(config, plan.n_ctx, 1) * plan.kv_bytes_per_value)
    kv = stream * plan.kv_streams
    overhead = generator_overhead_bytes(fmt, config) * plan.contexts
    memory = weights_bytes + kv + overhead + RUNTIME_PROCESS_BYTES
    tok_s = profile.memory_bandwidth_gbs * 1e9 / (weights_bytes + stream)
    kv_plan = f"{plan.n_ctx} {plan.kv_type}" + (f" x {plan.kv_streams}" if plan.kv_streams > 1 else "")
    return Estimate(fmt, quant, int(weights_bytes), kv, overhead, int(memory), round(tok_s, 2),
                    memory <= profile.app_memory_bytes, tok_s >= profile.target_decode_tok_s, measured, kv_plan)


def nominal_weights_bytes(parameters: int, bits_per_weight: float) -> int:
    return int(parameters * bits_per_weight / 8)
