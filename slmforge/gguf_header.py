"""Read a GGUF file's metadata and tensor table without materializing its arrays.

gguf-py's ``GGUFReader`` builds a numpy view for every element of every array, so opening
SmolLM2's GGUF (49,152 tokens, 48,900 merges) costs about 5 s of Python on 2 cores — and export
inspects each file it writes, base import reads the source's tokenizer facts. The facts we need
are scalars, strings and the tensor table; arrays are skipped (their element type and length
are kept). Layout and sizes come from gguf-py's own constants, so the two readers agree.

It sits in the shared package because export and base import (trainer) both read GGUF headers
and neither side may import the other; it needs ``gguf`` (the ``[train]`` extra), so the device
side never imports it.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf.constants import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
)

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class ArrayInfo:
    """An array value left unread: what it holds and how many."""

    element_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    n_elements: int
    n_bytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.pos + length > len(self.buf):
            raise ValueError(f"string of {length} bytes runs past the end of the file at offset {self.pos}")
        text = bytes(self.buf[self.pos: self.pos + length]).decode("utf-8", "replace")
        self.pos += length
        return text

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]

    def value(self, vtype: GGUFValueType) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, count = GGUFValueType(self.unpack("<I")), self.unpack("<Q")
            if etype == GGUFValueType.STRING:
                self.skip_strings(count)
            elif etype in _SCALAR:
                self.pos += count * struct.calcsize(_SCALAR[etype])
            else:
                raise ValueError(f"unsupported array element type {etype.name} at offset {self.pos}")
            return ArrayInfo(etype.name, count)
        return self.unpack(_SCALAR[vtype])


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Metadata (arrays as ``ArrayInfo``) and the tensor table; ValueError/struct.error on a damaged file."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        if cur.unpack("<I") != GGUF_MAGIC:
            raise ValueError("no GGUF magic at the start of the file")
        header = GGUFHeader(version=cur.unpack("<I"))
        n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
        data_end = 0
        for _ in range(n_kv):
            key = cur.string()
            header.metadata[key] = cur.value(GGUFValueType(cur.unpack("<I")))
        for _ in range(n_tensors):
            name = cur.string()
            dims = tuple(cur.unpack("<Q") for _ in range(cur.unpack("<I")))
            qtype = GGMLQuantizationType(cur.unpack("<I"))
            offset = cur.unpack("<Q")  # from the start of the data section
            n_elements = 1
            for d in dims:
                n_elements *= d
            block, type_size = GGML_QUANT_SIZES[qtype]
            header.tensors.append(TensorInfo(name, dims, qtype.name, n_elements, n_elements // block * type_size))
            data_end = max(data_end, offset + header.tensors[-1].n_bytes)
        alignment = int(header.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        data_start = -(-cur.pos // alignment) * alignment
        if data_start + data_end > len(buf):
            raise ValueError("tensor data runs past the end of the file (truncated?)")
    return header
