"""Read and write safetensors one tensor at a time, without mapping whole files.

The `safetensors` library writes a file from a dict of every tensor (the whole model in
RAM) and `safe_open` memory-maps its input, so every page it touches counts in the
process's resident memory. A merge of two models through them peaks near three model
sizes. The format is a length-prefixed JSON header followed by raw little-endian bytes,
so reading a tensor with one positioned read and writing the output as tensors arrive
keeps only the tensors in flight in memory.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from slmforge.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in ``file``
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor name → location, from one .safetensors file's header."""
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc.__class__.__name__}: {exc})") from None
    data_start = 8 + size
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        out[name] = TensorInfo(path, meta["dtype"], tuple(meta["shape"]), data_start + begin, data_start + end)
    return out


def checkpoint_tensors(checkpoint: Path) -> dict[str, TensorInfo]:
    """Every tensor of an HF checkpoint folder (single file or sharded with an index)."""
    single = checkpoint / "model.safetensors"
    index = checkpoint / "model.safetensors.index.json"
    if single.is_file():
        return read_header(single)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        out: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_header(checkpoint / shard))
        return out
    raise UserError(f"{checkpoint}: no model.safetensors (or sharded index) here; merge reads HF safetensors "
                    "checkpoints (save with save_pretrained, or import with `slmforge base import`)")


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Load one tensor with a positioned read (no memory map)."""
    buf = bytearray(info.end - info.start)
    fd = os.open(info.file, os.O_RDONLY)
    try:
        view, offset = memoryview(buf), 0
        while offset < len(buf):
            n = os.preadv(fd, [view[offset:]], info.start + offset)
            if n == 0:
                raise UserError(f"{info.file}: truncated safetensors file")
            offset += n
    finally:
        os.close(fd)
    if not buf:
        return torch.empty(info.shape, dtype=DTYPES[info.dtype])
    return torch.frombuffer(buf, dtype=DTYPES[info.dtype]).reshape(info.shape)


class StreamingWriter:
    """Write a safetensors file whose tensor list is known up front, one tensor at a time."""

    def __init__(self, path: Path, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        self._order = []
        for name, dtype, shape in specs:
            nbytes = torch.empty((), dtype=dtype).element_size()
            for d in shape:
                nbytes *= d
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, dtype, tuple(shape)))
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
        self._fh = open(path, "wb")  # noqa: SIM115 - stays open across write() calls
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        want_name, dtype, shape = self._order[self._next]
        if name != want_name or tuple(tensor.shape) != shape:
            raise RuntimeError(f"writer expected {want_name}{list(shape)}, got {name}{list(tensor.shape)}")
        data = tensor.to(dtype).contiguous().reshape(-1)
        if data.numel():
            self._fh.write(data.view(torch.uint8).numpy().data)
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._fh.close()
            raise RuntimeError(f"writer closed after {self._next} of {len(self._order)} tensors")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
