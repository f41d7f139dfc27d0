"""Our F16 GGUF export vs. llama.cpp's own convert_hf_to_gguf.py on the same checkpoint.

Reports the wall-time ratio (both measured in this run, one after the other) and a
tensor-by-tensor comparison of the two files (names, types, shapes, exact bytes), plus the
tokenizer metadata both wrote. The peer script is fetched from the llama-cpp-python sdist
(vendor/llama.cpp) into a temp folder for the bench only; it is never part of slmforge.

    python -m slmforge.bench.dev.export_peer --model ~/.cache/slmforge/base/SmolLM2-135M-Instruct-*/ \
        --out bench/results/export_peer.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def fetch_converter(workdir: Path) -> Path:
    """convert_hf_to_gguf.py from the installed llama-cpp-python version's sdist (pip download)."""
    version = importlib.metadata.version("llama_cpp_python")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={version}", "-d", str(workdir)], check=True, capture_output=True)
    sdist = next(workdir.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(workdir, filter="data")
    return next(workdir.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))


def _fields(reader: Any) -> dict[str, Any]:
    """Every metadata entry but the file's own (GGUF.*) and the ones naming their writer, for any architecture."""
    skip = ("GGUF.", "general.", "slmforge.")
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith(skip)}


def compare_files(ours: Path, peer: Path) -> dict[str, Any]:
    """Tensor-by-tensor equality and tokenizer-metadata agreement of two GGUF files."""
    from gguf import GGUFReader

    a, b = GGUFReader(str(ours)), GGUFReader(str(peer))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    rows, equal = [], 0
    for name in sorted(set(ta) | set(tb)):
        x, y = ta.get(name), tb.get(name)
        if x is None or y is None:
            rows.append({"tensor": name, "status": "only in " + ("peer" if x is None else "ours")})
            continue
        same_type = x.tensor_type == y.tensor_type
        same_shape = list(x.shape) == list(y.shape)
        same_bytes = same_type and same_shape and np.array_equal(np.asarray(x.data), np.asarray(y.data))
        if same_bytes:
            equal += 1
        else:
            diff = float(np.abs(np.asarray(x.data, np.float32) - np.asarray(y.data, np.float32)).max()) \
                if same_shape else None
            rows.append({"tensor": name, "status": "differs", "types": [x.tensor_type.name, y.tensor_type.name],
                         "shapes": [list(map(int, x.shape)), list(map(int, y.shape))], "max_abs_diff": diff})
    fa, fb = _fields(a), _fields(b)
    meta = {k: {"ours": _short(fa.get(k)), "peer": _short(fb.get(k)), "equal": fa.get(k) == fb.get(k)}
            for k in sorted(set(fa) | set(fb))}
    return {"tensors_ours": len(ta), "tensors_peer": len(tb), "tensors_equal": equal, "differences": rows,
            "metadata": meta}


def _short(value: Any) -> Any:
    if isinstance(value, list):
        return f"list of {len(value)}"
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value


def run(model: Path, converter: Path | None, out: Path | None) -> dict[str, Any]:
    from slmforge.export.gguf_writer import write_gguf

    with tempfile.TemporaryDirectory(prefix="export-peer-") as tmp:
        work = Path(tmp)
        converter = converter or fetch_converter(work)
        started = time.perf_counter()
        write_gguf(model, work / "ours-F16.gguf", "F16", progress=False)
        ours_s = time.perf_counter() - started
        started = time.perf_counter()
        peer = subprocess.run([sys.executable, str(converter), str(model), "--outtype", "f16",
                               "--outfile", str(work / "peer-F16.gguf")], capture_output=True, text=True,
                              check=False)
        peer_s = time.perf_counter() - started
        if peer.returncode != 0:
            raise SystemExit(f"peer converter failed: {peer.stderr.strip().splitlines()[-1]}")
        report = {"model": str(model), "converter": str(converter),
                  "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
                  "seconds_ours": round(ours_s, 2), "seconds_peer": round(peer_s, 2),
                  "time_ratio_ours_over_peer": round(ours_s / peer_s, 3),
                  **compare_files(work / "ours-F16.gguf", work / "peer-F16.gguf")}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="HF checkpoint folder")
    parser.add_argument("--converter", type=Path, help="path to convert_hf_to_gguf.py (default: from the sdist)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()
    report = run(args.model, args.converter, args.out)
    print(f"time ours {report['seconds_ours']} s, peer {report['seconds_peer']} s, "
          f"ratio {report['time_ratio_ours_over_peer']}")
    print(f"tensors: ours {report['tensors_ours']}, peer {report['tensors_peer']}, "
          f"byte-identical {report['tensors_equal']}")
    for row in report["differences"]:
        print("  ", row)
    for key, value in report["metadata"].items():
        print(f"  {'==' if value['equal'] else '!='} {key}: ours={value['ours']!r} peer={value['peer']!r}")


if __name__ == "__main__":
    main()
