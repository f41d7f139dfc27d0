"""GGUF quantization through llama.cpp's own quantizer, and what the result really holds.

The label (Q4_K_M, ...) names llama.cpp's recipe, not the content: tensors whose row length
is not a multiple of 256 (SmolLM2's 576-wide rows) cannot use K-quants and fall back to
Q5_0/Q8_0 and friends. So bits per weight are read back from the written file's tensor types.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.export.files import temp_sibling

from slmforge.errors import UserError

# Best quality first. F16 is the unquantized export itself.
LADDER: tuple[str, ...] = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
FLOAT_TYPES: tuple[str, ...] = ("F32", "F16", "BF16")
QUANTS: tuple[str, ...] = FLOAT_TYPES + LADDER + ("Q5_K_S", "Q4_K_S", "Q3_K_S", "Q3_K_L", "Q5_0", "Q4_1")

# llama.cpp's nominal bits per weight for each recipe (from its quantize tool's table),
# used only to skip candidates that cannot possibly fit before spending time quantizing.
NOMINAL_BPW: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69, "Q5_K_S": 5.54,
    "Q5_0": 5.5, "Q4_1": 5.0, "Q4_K_M": 4.89, "Q4_K_S": 4.58, "Q4_0": 4.5, "Q3_K_L": 4.27,
    "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 2.96,
}


def check_quant(name: str) -> str:
    """Normalise a quant label (case-insensitive) or refuse it in one line."""
    upper = name.upper()
    if upper not in QUANTS:
        raise UserError(f"unknown GGUF quant {name!r}; choose one of {', '.join(QUANTS)}")
    return upper


def bit_class(quant: str) -> str:
    """Which quality bound applies: '8bit' (8 bits and up), 'mid' (5-6), 'low' (4 and below)."""
    q = quant.upper()
    if q in FLOAT_TYPES or q in ("Q8_0", "INT8", "FP32", "FP16"):
        return "8bit"
    if q.startswith(("Q6", "Q5")):
        return "mid"
    return "low"


@dataclass
class GGUFContents:
    """What a GGUF file really holds."""

    size_bytes: int
    parameters: int
    weight_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int] = field(default_factory=dict)
    architecture: str | None = None


def inspect_gguf(path: str | Path) -> GGUFContents:
    """Read tensor types and sizes from a GGUF header; a corrupt file is a one-line UserError."""
    from slmforge.gguf_header import read_gguf_header

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: GGUF file not found")
    try:
        header = read_gguf_header(path)
    except Exception as exc:  # noqa: BLE001 - struct.error/ValueError/KeyError on damaged files
        raise UserError(f"{path}: not a readable GGUF file ({exc.__class__.__name__}: {exc}); re-export it") from None
    types: Counter[str] = Counter(t.type_name for t in header.tensors)
    params = sum(t.n_elements for t in header.tensors)
    weight_bytes = sum(t.n_bytes for t in header.tensors)
    arch = header.metadata.get("general.architecture")
    return GGUFContents(
        size_bytes=path.stat().st_size,
        parameters=params,
        weight_bytes=weight_bytes,
        bits_per_weight=round(8 * weight_bytes / max(params, 1), 3),
        tensor_types=dict(types.most_common()),
        architecture=arch if isinstance(arch, str) else None,
    )


@contextlib.contextmanager
def native_stderr_to(log: list[str]) -> Iterator[None]:
    """llama.cpp writes hundreds of fallback warnings straight to fd 2; keep them out of the
    user's terminal but collect them, so a failure can quote the last line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            log.extend(sink.read().decode("utf-8", "replace").splitlines())


def quantize_gguf(src: str | Path, dst: str | Path, quant: str, threads: int | None = None) -> GGUFContents:
    """Quantize an F16/F32 GGUF with llama_model_quantize; temp name, renamed when complete."""
    import llama_cpp

    src, dst = Path(src), Path(dst)
    quant = check_quant(quant)
    inspect_gguf(src)  # refuse a damaged input before llama.cpp sees it
    ftype_name = "LLAMA_FTYPE_ALL_F32" if quant == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant}"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads or os.cpu_count() or 1
    with temp_sibling(dst) as tmp:
        log: list[str] = []
        with native_stderr_to(log):
            status = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if status != 0:
            last = next((line for line in reversed(log) if line.strip()), "no message")
            raise UserError(f"{src}: llama.cpp could not quantize to {quant} ({last.strip()}); "
                            "is it a complete F16/F32 GGUF from 'slmforge export'?")
        contents = inspect_gguf(tmp)
    return contents
