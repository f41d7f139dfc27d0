"""The pipeline table's line per stage is the summary its verb wrote; planning writes no file."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from slmforge.pipeline_plan import PlanBuilder
from slmforge.recipe import load_recipe
from slmforge.stage_summary import manifest_summary, verb_summary

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python-docs"


def test_summary_is_read_from_a_folder_manifest_or_beside_an_output_file(tmp_path: Path):
    folder = tmp_path / "cpt"
    folder.mkdir()
    (folder / "slmforge.json").write_text(json.dumps({"summary": "written by the verb",
                                                      "metrics": {"heldout_ppl_after": 9.5}}))
    assert manifest_summary()(folder) == "written by the verb"
    (folder / "slmforge.json").write_text(json.dumps({"metrics": {"heldout_ppl_before": 12.0, "heldout_ppl_after": 9.5}}))
    assert manifest_summary()(folder) is None
    (tmp_path / "qa.jsonl").write_text("{}\n")
    (tmp_path / "qa.slmforge.json").write_text(json.dumps({"summary": "3 training Q&A pairs"}))
    assert manifest_summary()(tmp_path / "qa.jsonl") == "3 training Q&A pairs"


def test_answer_and_bench_lines_come_from_their_verbs_modules(tmp_path: Path):
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"answer": "Use  shutil.copyfile\n[1]", "citations": [{}, {}]}))
    assert verb_summary("slmforge.runtime.answer.cli:answer_line")(answer) == "2 citations: Use shutil.copyfile [1]"
    results = tmp_path / "results.jsonl"
    row = {"mode": "measured", "bundle": {"name": "pi"},
           "metrics": {"tg128_tok_s": {"value": 41.25}, "pp512_tok_s": {"value": 300.4}, "qa_token_f1": {"value": 0.5}}}
    results.write_text(json.dumps({"mode": "emulated"}) + "\n" + json.dumps(row) + "\n")
    assert verb_summary("slmforge.bench.records:results_line")(results) == \
        "pi on this host: pp512 300 tok/s, tg128 41.2 tok/s, QA F1 0.500"


def test_planning_writes_nothing_and_merge_gets_its_yaml_when_it_runs(tmp_path: Path):
    data = yaml.safe_load((EXAMPLE / "recipe-quick.yaml").read_text())
    data["documents"] = [str(EXAMPLE / "docs" / "faq")]
    data["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    stages = {s.name: s for s in PlanBuilder(load_recipe(path), path).build()}
    assert not (tmp_path / "run").exists()
    merge = stages["merge"]
    (config_path, text), = merge.writes.items()
    assert merge.argv[:2] == ["merge", str(config_path)] and config_path not in merge.inputs
    config = yaml.safe_load(text)
    assert config == merge.options["merge_config"]  # the fingerprint covers what the YAML says
    assert config["base_model"] == str(stages["pretrain"].output) and config["models"][1]["model"] == str(
        stages[merge.depends_on[1]].output)
    assert all(s.metric is not None for s in stages.values())
