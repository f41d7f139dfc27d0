"""bench: the results schema, emulation labels, quality scores, energy honesty, and reports over mixed records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from slmforge.bench import measure
from slmforge.bench.bandwidth import BandwidthSampler
from slmforge.bench.campaign import copy_quality, quality_identity
from slmforge.bench.emulate import emulate
from slmforge.bench.metrics import token_f1
from slmforge.bench.quality import load_qa
from slmforge.bench.records import (
    SCHEMA_VERSION,
    BenchRecord,
    BundleInfo,
    Metric,
    ProfileRef,
    device_facts,
    measured,
    read_records,
    unknown,
    validate_record,
)
from slmforge.bench.report import build_report
from slmforge.bench.run_bundle import BundleResult

from slmforge.profiles import load_profile
from tests.conftest import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def host_metrics(tg: float = 50.0, rss_mb: float = 400.0) -> dict[str, Metric]:
    return {
        "load_ms": measured(800, "ms"),
        "pp512_tok_s": measured(250, "tok/s", std=5, n=3),
        "tg128_tok_s": measured(tg, "tok/s", std=1.5, n=3),
        "peak_rss_mb": measured(rss_mb, "MB"),
        "app_memory_mb": measured(20000, "MB"),
        "rss_share_of_budget": measured(rss_mb / 20000, "ratio"),
        "memory_bandwidth_gbs": measured(10.0, "GB/s"),
        "perplexity": measured(18.9, "ppl", n=2047),
        "faq_hit_at_k": measured(0.92, "ratio", n=100),
        "qa_token_f1": unknown("F1", "no --qa file given", "skipped"),
        "energy_j_per_token": unknown("J/token", "no RAPL counters"),
    }


def make_record(mode: str = "measured", quant: str = "Q4_K_M", metrics: dict[str, Metric] | None = None,
                profile: str = "host", **extra) -> BenchRecord:
    return BenchRecord(
        run_id="r1", created="2026-01-01T00:00:00+00:00", mode=mode, device=device_facts(),
        profile=ProfileRef(name=profile, detected=profile == "host", cores=2, app_memory_gb=20.0,
                           memory_bandwidth_gbs=10.0, target_decode_tok_s=20),
        bundle=BundleInfo(path=f"/b/{quant}", name=f"smollm2-{quant}", format="gguf", quant=quant,
                          model_bytes=100_000_000),
        threads=2, repeats=3, metrics=metrics or host_metrics(), **extra)


# -- schema -------------------------------------------------------------------------------------------------

def test_metric_needs_a_value_when_measured_and_a_reason_when_not():
    with pytest.raises(ValidationError):
        Metric(unit="tok/s", status="measured")
    with pytest.raises(ValidationError):
        Metric(unit="J/token", status="unknown")  # absent without saying why
    with pytest.raises(ValidationError):
        Metric(value=1.0, unit="J/token", status="unknown", note="x")  # an "unknown" that carries a number
    assert unknown("J/token", "no counters").value is None


def test_record_validates_and_round_trips(tmp_path: Path):
    record = make_record()
    line = json.dumps(record.model_dump(mode="json"))
    again = validate_record(json.loads(line))
    assert again.schema_version == SCHEMA_VERSION
    assert again.device.libraries["llama_cpp_python"]
    (tmp_path / "r.jsonl").write_text(line + "\n")
    [loaded] = read_records([tmp_path / "r.jsonl"])
    assert loaded.valid and not loaded.problems


def test_a_measured_record_cannot_carry_projections():
    metrics = host_metrics()
    metrics["tg128_projected_tok_s"] = Metric(value=80.0, unit="tok/s", status="projected", note="x")
    with pytest.raises(ValidationError, match="projected"):
        make_record(metrics=metrics)
    with pytest.raises(ValidationError, match="emulation"):
        make_record(mode="emulated")  # no emulation block


def test_record_schema_rejects_unknown_top_level_fields():
    obj = make_record().model_dump(mode="json")
    obj["surprise"] = 1
    with pytest.raises(ValidationError):
        validate_record(obj)


# -- emulation ----------------------------------------------------------------------------------------------

def steady_bandwidth(gbs: float) -> BandwidthSampler:
    sampler = BandwidthSampler(probe=lambda: gbs)
    sampler.sample(3)
    return sampler


def test_bandwidth_sampler_projects_from_the_median_not_one_probe():
    probes = iter([11.2, 22.7, 12.0, 11.8, 30.0])
    sampler = BandwidthSampler(probe=lambda: next(probes))
    sampler.sample(5)
    assert sampler.median == pytest.approx(12.0) and sampler.spread == (11.2, 30.0)
    pi5 = load_profile("raspberry-pi-5-8gb")  # 10.5 GB/s
    metrics, emulation, _ = emulate(pi5, host_metrics(tg=50.0), sampler, 100_000_000, 2, "gguf")
    assert metrics["tg128_projected_tok_s"].value == pytest.approx(50.0 * 10.5 / 12.0)
    assert emulation.host_bandwidth_probes == 5 and emulation.host_bandwidth_range_gbs == [11.2, 30.0]


def test_identical_bundles_share_quality_figures_but_not_other_contexts(tmp_path: Path):
    from slmforge.manifest import BundleManifest, EmbedderInfo

    def bundle(name: str, n_ctx: int, sha: str = "ab" * 32) -> Path:
        path = tmp_path / name
        path.mkdir()
        manifest = BundleManifest(files=[], model={"format": "gguf", "quant": "Q8_0", "path": "m.gguf", "sha256": sha},
                                  embedder=EmbedderInfo(path="embedder"), system_prompt="s",
                                  generation={"n_ctx": n_ctx}, profile=name,
                                  index={"path": "rag.db", "chunks": 10, "updated": name})
        (path / "manifest.json").write_text(manifest.model_dump_json())
        return path

    pi5, android, zero = bundle("pi5", 2048), bundle("android", 2048), bundle("zero", 1024)
    other_model = bundle("other", 2048, sha="cd" * 32)
    assert quality_identity(pi5) == quality_identity(android)  # index 'updated' time does not matter
    assert quality_identity(pi5) not in (quality_identity(zero), quality_identity(other_model))
    assert quality_identity(tmp_path / "bare.gguf") is None
    result = BundleResult(bundle={}, metrics={"tg128_tok_s": {"value": 60.0, "unit": "tok/s"}})
    copy_quality(result, "pi5", {"perplexity": {"value": 15.2, "unit": "ppl", "note": None},
                                 "tg128_tok_s": {"value": 99.0, "unit": "tok/s"}})
    assert result.metrics["perplexity"]["value"] == 15.2 and "measured on pi5" in result.metrics["perplexity"]["note"]
    assert result.metrics["tg128_tok_s"]["value"] == 60.0  # speed is never carried over

def test_emulation_projects_decode_and_labels_it():
    pi5 = load_profile("raspberry-pi-5-8gb")  # 10.5 GB/s
    metrics, emulation, notes = emulate(pi5, host_metrics(tg=50.0), steady_bandwidth(21.0),
                                        weight_bytes=100_000_000, threads=2, bundle_format="gguf")
    projected = metrics["tg128_projected_tok_s"]
    assert projected.status == "projected" and projected.value == pytest.approx(25.0)
    assert emulation.label == "projection" and emulation.bandwidth_ratio == pytest.approx(0.5)
    # compute-bound numbers are left unknown, never copied from the host as if measured on the Pi
    assert metrics["pp512_tok_s"].status == "unknown" and metrics["pp512_tok_s"].value is None
    assert metrics["tg128_tok_s"].value is None
    assert metrics["decode_ceiling_tok_s"].status == "projected"
    assert metrics["perplexity"].value == pytest.approx(18.9)  # a property of the artifact
    assert any("4" in n for n in notes)  # host has fewer cores than the profile: said so
    BenchRecord(**{**make_record().model_dump(), "mode": "emulated", "emulation": emulation, "metrics": metrics})


def test_emulation_caps_projection_at_the_bandwidth_ceiling_and_checks_memory():
    zero = load_profile("raspberry-pi-zero-2w")  # 1.8 GB/s, 0.3 GB app memory
    metrics, _, notes = emulate(zero, host_metrics(tg=500.0, rss_mb=400.0), steady_bandwidth(2.0),
                                weight_bytes=100_000_000, threads=2, bundle_format="onnx")
    ceiling = 1.8e9 / 100_000_000
    assert metrics["tg128_projected_tok_s"].value == pytest.approx(ceiling)
    assert "capped" in metrics["tg128_projected_tok_s"].note
    assert metrics["rss_share_of_budget"].value > 1 and "NOT FIT" in metrics["rss_share_of_budget"].note
    assert any("prefers gguf" in n for n in notes)


# -- measurement helpers -------------------------------------------------------------------------------------

class FakeProbe:
    weight_bytes = 1000
    vocab_size = 100

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def prefill(self, tokens: list[int]) -> float:
        self.calls.append(("prefill", len(tokens)))
        return 0.5

    def decode(self, tokens: list[int]) -> float:
        self.calls.append(("decode", len(tokens)))
        return 2.0 if len(self.calls) % 4 else 4.0


def test_speed_is_llama_bench_shaped_with_warmup():
    probe = FakeProbe()
    result = measure.speed(probe, repeats=3)
    assert probe.calls[:2] == [("prefill", measure.WARMUP_TOKENS), ("decode", measure.WARMUP_TOKENS)]
    assert probe.calls[2:] == [("prefill", 512), ("decode", 128)] * 3
    assert result["pp512_tok_s"].value == pytest.approx(1024) and result["pp512_tok_s"].n == 3
    rates = [32, 64, 32]  # 128 tokens over 4 s, 2 s, 4 s (the fake alternates)
    assert result["tg128_tok_s"].value == pytest.approx(sum(rates) / 3, rel=1e-3)
    assert result["tg128_tok_s"].std > 0


def test_percentiles_and_ceiling():
    p = measure.percentile_metrics([float(i) for i in range(1, 101)], "retrieval")
    assert p["retrieval_p50_ms"].value == pytest.approx(50.5) and p["retrieval_p95_ms"].value == pytest.approx(95.05)
    assert measure.percentile_metrics([], "retrieval")["retrieval_p50_ms"].status == "skipped"
    c = measure.ceiling_metrics(100_000_000, 10.0, measured(50, "tok/s"))
    assert c["decode_ceiling_tok_s"].value == pytest.approx(100) and c["decode_share_of_ceiling"].value == 0.5


def test_energy_reads_rapl_when_there_and_is_unknown_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(measure, "RAPL_GLOB", str(tmp_path / "none:*"))
    monkeypatch.setattr(measure, "BATTERY_GLOB", str(tmp_path / "BAT*"))
    metric = measure.energy_per_token(measure.EnergyMeter(), lambda: 128)
    assert metric.status == "unknown" and metric.value is None and "RAPL" in metric.note

    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "name").write_text("package-0\n")
    (pkg / "max_energy_range_uj").write_text("1000000000\n")
    (pkg / "energy_uj").write_text("5000000\n")
    monkeypatch.setattr(measure, "RAPL_GLOB", str(tmp_path / "intel-rapl:*"))
    meter = measure.EnergyMeter()

    def run() -> int:
        (pkg / "energy_uj").write_text("7560000\n")  # 2.56 J while "decoding"
        return 128

    metric = measure.energy_per_token(meter, run)
    assert metric.status == "measured" and metric.value == pytest.approx(0.02)


# -- quality -------------------------------------------------------------------------------------------------

def test_token_f1_follows_squad():
    assert token_f1("Use shutil.copyfile()", "use shutilcopyfile") == 1.0
    assert token_f1("the cat sat", "a dog sat") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("nothing shared", "completely different") == 0.0


def test_qa_file_formats_and_errors(tmp_path: Path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in (
        {"question": "Q1?", "answer": "A1"},
        {"instruction": "Q2?", "input": "", "output": "A2"},
        {"messages": [{"role": "user", "content": "Q3?"}, {"role": "assistant", "content": "A3"}]},
    )) + "\n")
    assert load_qa(path) == [("Q1?", "A1"), ("Q2?", "A2"), ("Q3?", "A3")]
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(Exception, match="qa.jsonl:1"):
        load_qa(path)


# -- report --------------------------------------------------------------------------------------------------

def test_report_over_mixed_versions_and_missing_fields(tmp_path: Path):
    current = [make_record(quant=q, metrics=host_metrics(tg=t)) for q, t in (("Q8_0", 40.0), ("Q4_K_M", 60.0))]
    pi5 = load_profile("raspberry-pi-5-8gb")
    metrics, emulation, notes = emulate(pi5, host_metrics(), steady_bandwidth(21.0), 100_000_000, 2, "gguf")
    emulated = make_record(mode="emulated", emulation=emulation, metrics=metrics, notes=notes,
                           profile="raspberry-pi-5-8gb")
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(r.model_dump(mode="json")) + "\n" for r in (*current, emulated)))
    future = make_record(quant="int4").model_dump(mode="json")
    future["schema_version"] = SCHEMA_VERSION + 1
    future["new_field"] = {"x": 1}
    del future["metrics"]["perplexity"]
    future["metrics"]["tg128_tok_s"] = 33.0  # a bare number, as another schema might write it
    old = {"schema_version": 0, "bundle": {"name": "old-bundle"}, "metrics": {"pp512_tok_s": {"value": 99}}}
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(future) + "\n" + json.dumps(old) + "\nnot json\n")

    summary = build_report([a, b], tmp_path / "report")
    out = tmp_path / "report"
    assert summary["records"] == 5
    md = (out / "report.md").read_text()
    assert "smollm2-Q8_0" in md and "smollm2-int4" in md and "old-bundle" in md
    assert "(projected)" in md and "raspberry-pi-5-8gb (emulated)" in md
    assert "33.0†" in md  # the other-schema value is shown, flagged
    assert "fields missing from the record" in md and "perplexity" in md
    assert "not JSON" in " ".join(summary["problems"])
    report = json.loads((out / "report.json").read_text())
    rows = {r["bundle"]: r for r in report["rows"]}
    assert rows["smollm2-int4"]["valid"] is False and rows["smollm2-int4"]["metrics"]["perplexity"] is None
    assert rows["smollm2-Q8_0"]["metrics"]["tg128_tok_s"]["value"] == 40.0
    assert any("schema_version" in p for p in report["problems"])
    for png in ("tok_s_by_device.png", "quality_vs_speed.png", "memory_vs_budget.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png


def _same_file_records(tmp_path: Path) -> Path:
    """Three bundles (one per profile) shipping the same Q8_0 file, one with another file; each measured on the
    host and emulated for a Pi 5 (the demo's shape)."""
    pi5 = load_profile("raspberry-pi-5-8gb")
    lines = []
    for name, sha, tg in (("pi5", "a" * 64, 50.0), ("phone", "a" * 64, 54.0), ("laptop", "a" * 64, 52.0),
                          ("laptop-q4", "b" * 64, 70.0)):
        quant = "Q4_K_M" if name == "laptop-q4" else "Q8_0"
        bundle = BundleInfo(path=f"/b/{name}", name=name, format="gguf", quant=quant, model_bytes=100_000_000,
                            model_sha256=sha, built_for_profile=name)
        host = make_record(quant=quant, metrics=host_metrics(tg=tg, rss_mb=400.0 if sha[0] == "a" else 300.0))
        metrics, emulation, notes = emulate(pi5, host.metrics, steady_bandwidth(21.0), 100_000_000, 2, "gguf")
        emulated = make_record(mode="emulated", emulation=emulation, metrics=metrics, notes=notes,
                               profile="raspberry-pi-5-8gb")
        lines += [r.model_copy(update={"bundle": bundle}).model_dump(mode="json") for r in (host, emulated)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_report_summary_is_one_row_per_device_and_file_with_projections_apart(tmp_path: Path):
    results = _same_file_records(tmp_path)
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({
        "baseline": "base", "comparisons": [],
        "systems": {"/bundles/phone": {"f1": 0.41, "citation_accuracy": 0.75, "hit_at_k": 0.9},
                    "base": {"f1": {"value": 0.2, "low": 0.1, "high": 0.3}, "citation_accuracy": 0.5}}}))
    summary = build_report([results], tmp_path / "rep", eval_file=tmp_path)  # the folder eval --out wrote
    assert summary["records"] == 8 and summary["summary_rows"] == 4  # 2 devices × 2 files
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.index("## Summary") < md.index("## Measured on the device") < md.index("## Projected for emulated")
    table = md.split("## Summary")[1].split("\n## ")[0]
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
             if line.startswith("| ")]
    header, rows = lines[0], lines[1:]
    cells = {(r[0], r[1]): r for r in rows}
    col = {name: header.index(name) for name in header}
    host_q8 = cells[("host", "gguf Q8_0 · aaaaaaaa")]
    assert host_q8[col["bundles (profiles)"]] == "pi5, phone, laptop"
    assert host_q8[col["tok/s measured"]] == "50.0–54.0" and host_q8[col["tok/s projected"]] == "—"
    assert "400 / 20000 MB: fits" in host_q8[col["peak RSS / budget"]]
    assert host_q8[col["eval F1"]] == "0.41" and host_q8[col["eval citation acc."]] == "0.75"
    pi_q8 = cells[("raspberry-pi-5-8gb (emulated)", "gguf Q8_0 · aaaaaaaa")]
    assert pi_q8[col["tok/s measured"]] == "—" and pi_q8[col["tok/s projected"]] not in ("—", "")
    assert "(projected)" not in table  # the column says it; the cells hold numbers only
    q4 = cells[("host", "gguf Q4_K_M · bbbbbbbb")]
    assert q4[col["bundles (profiles)"]] == "laptop-q4" and q4[col["eval F1"]] == "—"
    assert "base" in md.split("## Eval")[1]  # the unmatched system is still shown in its own table
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(report["summary"]) == 4 and report["eval"]["unmatched"] == ["base"]
    merged = report["summary"][0]["metrics"]["tg128_tok_s"]
    assert merged["value"] == pytest.approx(52.0) and "range 50–54" in merged["note"]
    for png in ("tok_s_by_device.png", "memory_vs_budget.png"):
        assert (tmp_path / "rep" / png).read_bytes().startswith(PNG_MAGIC)


def test_shipped_demo_report_opens_with_one_row_per_device_and_file(tmp_path: Path):
    results = Path(__file__).resolve().parents[1] / "bench" / "results" / "demo" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    pairs = {(r["profile"]["name"], r["mode"], r["bundle"]["model_sha256"]) for r in records}
    summary = build_report([results], tmp_path / "rep")
    assert summary["records"] == len(records) == 12 and summary["summary_rows"] == len(pairs) == 4
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.split("\n## ")[1].startswith("Summary")


def test_report_eval_file_errors_are_one_line(tmp_path: Path):
    results = _same_file_records(tmp_path)
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    proc = run_cli("bench", "report", str(results), "--out", str(tmp_path / "rep"), "--eval", str(bad))
    assert proc.returncode == 2 and "not JSON" in proc.stderr and proc.stderr.strip().count("\n") == 0
    bad.write_text(json.dumps({"baseline": "x"}))
    proc = run_cli("bench", "report", str(results), "--out", str(tmp_path / "rep"), "--eval", str(bad))
    assert proc.returncode == 2 and "'systems'" in proc.stderr and not (tmp_path / "rep").exists()


def test_cli_errors_are_one_line(tmp_path: Path):
    proc = run_cli("bench", "run", str(tmp_path / "missing"), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr
    proc = run_cli("bench", "report", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    proc = run_cli("bench", "report", str(empty), "--out", str(tmp_path / "rep"))
    assert proc.returncode == 2 and "no records" in proc.stderr and not (tmp_path / "rep").exists()


def test_bench_run_path_imports_without_torch():
    code = (
        "import sys, importlib, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'trl'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "for m in ('cli', 'campaign', 'run_bundle', 'measure', 'quality', 'emulate', 'records', 'report', 'plots',\n"
        "          'dev.runtime_overhead', 'metrics', 'evaluate', 'eval_report', 'cli_eval'):\n"
        "    importlib.import_module('slmforge.bench.' + m)\n"
        "importlib.import_module('slmforge.runtime.answer.engine')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_faq_hit_at_k_uses_the_bundles_own_index(tmp_path: Path):
    import numpy as np
    from slmforge.bench.quality import faq_questions, faq_retrieval
    from slmforge.runtime.index.chunking import Chunk
    from slmforge.runtime.index.store import DocumentRecord, RagIndex

    chunks = [Chunk("Use shutil.copyfile.", "faq/library.rst", ("Library FAQ", "How do I copy a file?"), 0, 20, 5),
              Chunk("With del.", "faq/library.rst", ("Library FAQ", "How do I delete a file?"), 21, 30, 3),
              Chunk("Intro text.", "faq/library.rst", ("Library FAQ",), 31, 42, 3),
              Chunk("Not a FAQ?", "tutorial/x.rst", ("Is this a question?",), 0, 10, 3)]
    vectors = np.eye(4, 8, dtype=np.float32)  # bit vectors need a multiple of 8 dims
    index = RagIndex.create(tmp_path / "rag.db", dim=8, embedder="test")
    index.add_documents([DocumentRecord("faq/library.rst", "h1", 42, chunks[:3], vectors[:3]),
                         DocumentRecord("tutorial/x.rst", "h2", 10, chunks[3:], vectors[3:])])
    questions = faq_questions(index)
    assert [q.question for q in questions] == ["How do I copy a file?", "How do I delete a file?"]

    class FakeEngine:  # retrieves the copy section for every question: one hit, one miss
        def __init__(self) -> None:
            self.index = index

        def retrieve(self, question: str, k: int):
            return index.search(vectors[0], "copy", k=k)[:1], {}

    metrics, latencies = faq_retrieval(FakeEngine(), k=1)
    assert metrics["faq_hit_at_k"].value == 0.5 and metrics["faq_hit_at_k"].n == 2
    assert len(latencies) == 2 and all(ms >= 0 for ms in latencies)
    index.close()


def test_bundle_description_from_a_bare_model_name(tmp_path: Path):
    from slmforge.bench.run_bundle import describe

    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_K_M.gguf"
    gguf.write_bytes(b"x" * 10)
    info = describe(gguf, None)
    assert (info.format, info.quant, info.model_bytes) == ("gguf", "Q4_K_M", 10)
    onnx = tmp_path / "onnx-int4"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"y" * 5)
    assert describe(onnx, None).quant == "int4" and describe(onnx, None).format == "onnx"


def test_paired_bootstrap_separates_signal_from_noise():
    from slmforge.bench.metrics import paired_bootstrap

    better = paired_bootstrap([0.5 + 0.01 * i for i in range(20)], [0.2 + 0.01 * i for i in range(20)])
    assert better["mean"] == 0.3 and better["ci95_low"] > 0 and better["significant"]
    noisy = paired_bootstrap([0.3, 0.1, 0.4, 0.0, 0.2], [0.1, 0.3, 0.2, 0.2, 0.2])
    assert noisy["ci95_low"] < 0 < noisy["ci95_high"] and not noisy["significant"]


def test_merge_quality_scores_parents_and_merge(tiny_checkpoint: Path, tmp_path: Path, capsys):
    """The merge-quality bench scores every checkpoint the same way and places the merge."""
    import json
    import shutil

    from slmforge.bench.dev.merge_quality import main, verdict

    assert verdict(10.0, [12.0, 11.0], higher_is_better=False) == "above both"
    assert verdict(11.5, [12.0, 11.0], higher_is_better=False) == "between"
    assert verdict(0.1, [0.2, 0.3], higher_is_better=True) == "below both"
    a, b = shutil.copytree(tiny_checkpoint, tmp_path / "a"), shutil.copytree(tiny_checkpoint, tmp_path / "b")
    (tmp_path / "held.jsonl").write_text(json.dumps({"text": "the pump must be primed before use " * 20}) + "\n")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "How do I prime the pump?",
                                                   "answer": "Fill the housing with water."}) + "\n")
    c = shutil.copytree(tiny_checkpoint, tmp_path / "c")
    code = main(["--parent", str(a), "--parent", str(b), "--merged", str(tiny_checkpoint), "--merged", str(c), "--heldout",
                 str(tmp_path / "held.jsonl"), "--qa", str(tmp_path / "qa.jsonl"), "--ppl-tokens", "64",
                 "--max-new-tokens", "4", "--out", str(tmp_path / "r.json")])
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    ppls = {m["ppl"] for m in result["models"].values()}
    assert len(result["models"]) == 4 and len(ppls) == 1 and ppls.pop() > 1  # same weights, same figures
    assert result["ppl_verdict"] == "above both" and result["models"][str(a)]["questions"] == 1
    assert set(result["verdicts"]) == {str(tiny_checkpoint), str(c)}
    losses = {m["answer_loss"] for m in result["models"].values()}
    assert len(losses) == 1 and losses.pop() > 0 and result["answer_loss_verdict"] == "above both"
    same = result["verdicts"][str(c)]["qa_f1_vs_parents"][str(a)]
    assert same["mean"] == 0 and not same["significant"]  # identical answers: no difference, no signal
    capsys.readouterr()
    assert main(["--parent", str(a), "--merged", str(b), "--heldout", str(tmp_path / "none.jsonl"),
                 "--qa", str(tmp_path / "qa.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "none.jsonl" in err[0]


def test_report_sets_base_models_side_by_side_per_profile(tmp_path: Path):
    """Two base models, each with a Pi 5 bundle and a phone bundle, emulated on both and on the Pi Zero 2 W
    (for which neither has a bundle): one row per (profile, model) with that profile's file, its gate, and
    the smallest file's shortfall on the Pi Zero; one model alone gives no such section."""
    lines = []
    files = {("SmolLM2-135M", "raspberry-pi-5-8gb"): ("Q8_0", 145_000_000, 400.0, 50.0),
             ("SmolLM2-135M", "android-midrange-8gb"): ("Q4_K_M", 105_000_000, 360.0, 70.0),
             ("gemma-3-270m", "raspberry-pi-5-8gb"): ("Q8_0", 291_000_000, 600.0, 30.0),
             ("gemma-3-270m", "android-midrange-8gb"): ("Q3_K_M", 242_000_000, 560.0, 40.0)}
    for (model, built_for), (quant, size, rss, tg) in files.items():
        bundle = BundleInfo(path=f"/b/{model}/{built_for}", name=built_for, format="gguf", quant=quant, model_bytes=size,
                            model_sha256=(model + built_for).encode().hex()[:64].ljust(64, "0"), built_for_profile=built_for,
                            base_model=model, gate={"gate": "pass", "ppl_ratio": 1.01, "kl_mean": 0.02, "top1_agreement": 0.9})
        host = make_record(quant=quant, metrics=host_metrics(tg=tg, rss_mb=rss))
        lines.append(host.model_copy(update={"bundle": bundle}).model_dump(mode="json"))
        for profile in ("raspberry-pi-5-8gb", "android-midrange-8gb", "raspberry-pi-zero-2w"):
            metrics, emulation, notes = emulate(load_profile(profile), host.metrics, steady_bandwidth(21.0), size, 2, "gguf")
            emulated = make_record(mode="emulated", emulation=emulation, metrics=metrics, notes=notes, profile=profile)
            lines.append(emulated.model_copy(update={"bundle": bundle}).model_dump(mode="json"))
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = build_report([results], tmp_path / "rep")
    assert "models_by_profile.png" in summary["files"]
    assert (tmp_path / "rep" / "models_by_profile.png").read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md.split("## Base models side by side, per profile")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")][1:]
    cells = {(r[0], r[1]): r for r in rows}
    assert len(rows) == 6  # 3 profiles × 2 models
    assert cells[("android-midrange-8gb", "gemma-3-270m")][2].startswith("gguf Q3_K_M (242.0 MB)")
    assert cells[("raspberry-pi-5-8gb", "SmolLM2-135M")][2].startswith("gguf Q8_0 (145.0 MB)")
    zero = cells[("raspberry-pi-zero-2w", "gemma-3-270m")]
    assert "no bundle" in zero[2] and "Q3_K_M" in zero[2]  # the smallest file stands in
    assert "does not fit: 260 MB short" in zero[5]  # 560 MB peak against 300 MB
    assert zero[6].startswith("pass: ppl ×1.0100, KL 0.020, top-1 0.900")
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert {(e["profile"], e["base_model"]) for e in report["models_by_profile"]} == set(cells)
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps(line) + "\n" for line in lines if line["bundle"]["base_model"] == "SmolLM2-135M"))
    build_report([one], tmp_path / "rep1")
    assert "side by side" not in (tmp_path / "rep1" / "report.md").read_text()
