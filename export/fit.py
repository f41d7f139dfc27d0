"""Will this quantization run on that device? Memory and decode-speed estimates per profile.

Runtime memory = weights + KV cache at the profile's max_context + generator overhead + the
runtime process.
  * KV cache is computed from the model config: layers x kv_heads x head_dim x 2 (K and V)
    x bytes per value x context. llama.cpp keeps it in F16 (2 bytes); onnxruntime-genai's CPU
    models keep it in float32 (4 bytes) and allocate it for the whole context up front.
  * Overheads were measured once (docs/export.md, "Runtime overhead"): RSS after loading and
    one decode step, minus the file size and the computed KV cache, on SmolLM2-135M.
  * The runtime process (Python, numpy, onnxruntime with the embedder, SQLite, the CLI) is the
    peak RSS of ``slmforge run`` minus all of the above (bench/dev/runtime_footprint.py): a base
    plus the embedder file. A device runs the model inside it, so app memory must hold both.
Decode speed = memory bandwidth / bytes read per token, where one token reads every weight
once plus the KV cache (taken at full context: the worst case a user of the profile hits).
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

# bench/dev/runtime_footprint.py: `slmforge run` minus model, KV, generator and the embedder file was 128.6 / 130.1 MB
# (demo Q8_0 bundles, int8 embedder) and 127.7 MB (test bundle, fp32 embedder) on one 2-core machine, and 147.0 MB
# for the same test bundle on the CI machine of the same kind (same package versions): the base moves with the host
# (allocator, kernel, CPU), so the constant sits 14 % above the highest seen.
RUNTIME_BASE_BYTES = 160 * 1024 * 1024
# The int8 all-MiniLM-L6-v2 that export writes into every bundle (22.95 MB); onnxruntime holds it in memory.
DEFAULT_EMBEDDER_BYTES = 23_000_000
RUNTIME_PROCESS_BYTES = RUNTIME_BASE_BYTES + DEFAULT_EMBEDDER_BYTES

KV_BYTES_PER_VALUE = {"gguf": 2, "onnx": 4}
OVERHEAD_BYTES = {"gguf": LLAMACPP_OVERHEAD_BYTES, "onnx": ORT_GENAI_OVERHEAD_BYTES}

MB = 1e6


def kv_cache_bytes(config: dict[str, Any], n_ctx: int, bytes_per_value: int) -> int:
    """K and V for every layer at ``n_ctx`` positions."""
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
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

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fast_enough

    def shortfall_bytes(self, profile: DeviceProfile) -> int:
        """How much more app memory this candidate needs than the profile has (0 when it fits)."""
        return max(0, self.memory_bytes - profile.app_memory_bytes)

    def why(self, profile: DeviceProfile) -> str:
        mem = (f"est. memory {self.memory_bytes / MB:.0f} MB (weights {self.weights_bytes / MB:.0f} + KV@"
               f"{profile.max_context} {self.kv_bytes / MB:.0f} + generator {self.overhead_bytes / MB:.0f} + "
               f"runtime process {RUNTIME_PROCESS_BYTES / MB:.0f}) "
               f"{'<=' if self.fits_memory else '>'} app memory {profile.app_memory_bytes / MB:.0f} MB")
        speed = (f"est. decode {self.decode_tok_s:.1f} tok/s ({profile.memory_bandwidth_gbs} GB/s / "
                 f"{(self.weights_bytes + self.kv_bytes) / MB:.0f} MB per token) "
                 f"{'>=' if self.fast_enough else '<'} target {profile.target_decode_tok_s:g}")
        return f"{self.quant}: {mem}; {speed}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generator_overhead_bytes(fmt: str, config: dict[str, Any]) -> int:
    """The generator's own memory beyond weights and KV cache (llama.cpp's grows with the vocabulary)."""
    if fmt == "gguf" and config.get("vocab_size"):
        return LLAMACPP_OVERHEAD_BASE_BYTES + LLAMACPP_OVERHEAD_PER_TOKEN_BYTES * int(config["vocab_size"])
    return OVERHEAD_BYTES[fmt]


def estimate(fmt: str, quant: str, weights_bytes: int, config: dict[str, Any], profile: DeviceProfile,
             measured: bool = True) -> Estimate:
    """Memory and decode speed of one candidate on one profile."""
    kv = kv_cache_bytes(config, profile.max_context, KV_BYTES_PER_VALUE[fmt])
    overhead = generator_overhead_bytes(fmt, config)
    memory = weights_bytes + kv + overhead + RUNTIME_PROCESS_BYTES
    tok_s = profile.memory_bandwidth_gbs * 1e9 / (weights_bytes + kv)
    return Estimate(fmt, quant, int(weights_bytes), kv, overhead, int(memory), round(tok_s, 2),
                    memory <= profile.app_memory_bytes, tok_s >= profile.target_decode_tok_s, measured)


def nominal_weights_bytes(parameters: int, bits_per_weight: float) -> int:
    return int(parameters * bits_per_weight / 8)
