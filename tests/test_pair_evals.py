"""`bench/dev/pair_evals.py`: two eval runs paired by question, as `eval` pairs systems within one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _run(folder: Path, system: str, hits: list[bool], f1: list[float]) -> Path:
    folder.mkdir()
    rows = [{"kind": "heldout", "question": f"q{i}", "reference": "r", "source": "d.rst", "section": None,
             "systems": {system: {"rag": {"answer": "a", "context": [], "metrics": {
                 "f1": f, "rouge_l": f, "hit_at_k": h, "cites": h, "citation_accurate": h if h else None,
                 "groundedness": 0.5, "refused": False}}}}}
            for i, (h, f) in enumerate(zip(hits, f1))]
    rows.append({"kind": "probe", "question": "off topic", "reference": None, "systems": {system: {"rag": {}}}})
    (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_pairs_two_runs_by_question(tmp_path: Path):
    from slmforge.bench.dev.pair_evals import pair

    a = _run(tmp_path / "a", "stock-bundle", [True, False, False, True], [0.2, 0.1, 0.1, 0.3])
    b = _run(tmp_path / "b", "trained-bundle", [True, True, True, True], [0.4, 0.3, 0.3, 0.5])
    report = pair(a, b, "stock", "trained")
    diffs = {d["metric"]: d for d in report["b_minus_a"]}
    assert report["questions"] == 4
    assert diffs["f1"]["delta"] == pytest.approx(0.2) and diffs["f1"]["ci95"] == [pytest.approx(0.2)] * 2
    assert diffs["hit_at_k"]["delta"] == pytest.approx(0.5) and diffs["hit_at_k"]["n"] == 4
    assert diffs["citation_accuracy"]["n"] == 2  # judged only where both cited
    assert report["source_found_by_one_only"] == {"stock": 0, "trained": 2}


def test_a_run_with_two_systems_needs_a_name(tmp_path: Path):
    a = _run(tmp_path / "a", "x", [True], [0.1])
    rows = [json.loads(line) for line in (a / "answers.jsonl").read_text().splitlines()]
    rows[0]["systems"]["y"] = rows[0]["systems"]["x"]
    (a / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run([sys.executable, "-m", "slmforge.bench.dev.pair_evals", str(a), str(a), "--out",
                           str(tmp_path / "p.json")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--system-a" in proc.stderr
