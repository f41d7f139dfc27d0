"""`slmforge pipeline` on tiny models: skip when up to date, redo what changed, survive a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli

DOCS = {
    "guide.md": "# Field guide\n\nThe pump must be primed before use. Open the valve slowly and wait for water.\n\n"
                "## How do I prime the pump?\n\nFill the housing with water, close the cap, then start the motor.\n\n"
                "## How do I clean the filter?\n\nRemove the filter, rinse it with clean water and let it dry.\n",
    "notes.txt": "Maintenance notes. Check the oil level every week. Replace the belt every six months. "
                 "Store the unit in a dry place. Contact support at help@example.com for spare parts.\n" * 3,
    "faq.rst": "FAQ\n===\n\nHow do I reset the controller?\n-----------------------------\n\n"
               "Hold the reset button for ten seconds until the light blinks twice.\n\n"
               "Why does the motor overheat?\n----------------------------\n\n"
               "The air intake is blocked; clear it and let the motor cool for an hour.\n",
}


def _recipe(tmp_path: Path, base: Path, docs: Path, short: bool = False) -> Path:
    recipe = {
        "name": "tiny",
        "base_model": str(base),
        "documents": [str(docs)],
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "stages": {
            "prepare": {"heldout_fraction": 0.34, "min_chars": 20},
            "pretrain": {"max_steps": 2, "seq_len": 64, "batch_size": 2},
            "sft": {"max_steps": 2, "seq_len": 64, "batch_size": 2},
            "pairs": {"max_new_tokens": 8},
            "align": {"method": "dpo", "max_steps": 1, "batch_size": 2},
            "merge": {"merge_method": "linear", "weights": [0.5, 0.5], "parameters": {}},
            "export": {"enabled": False, "profiles": ["host"]},
            "bench": {"enabled": False},
        },
    }
    if short:  # prepare → qa → pretrain only: enough to kill a run mid-stage and resume it
        for stage in ("sft", "pairs", "align", "merge"):
            recipe["stages"][stage]["enabled"] = False
        # long enough that the kill lands inside it: a stage forked from the warm server starts in well under 1 s
        recipe["stages"]["pretrain"]["max_steps"] = 300
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture()
def user_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "my-docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    return docs


def _statuses(stdout: str) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads(stdout)["stages"]}


def test_recipe_errors_name_the_key(tmp_path, tiny_checkpoint, user_docs):
    path = _recipe(tmp_path, tiny_checkpoint, user_docs)
    data = yaml.safe_load(path.read_text())
    data["stages"]["pretrain"]["max_stpes"] = 3
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("pipeline", str(path), "--dry-run")
    assert proc.returncode == 2 and "stages.pretrain.max_stpes" in proc.stderr, proc.stderr
    data["stages"]["pretrain"] = {"max_steps": "many"}
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("pipeline", str(path), "--dry-run")
    assert proc.returncode == 2 and "stages.pretrain.max_steps" in proc.stderr, proc.stderr
    data["stages"]["pretrain"] = {}
    data["documentz"] = ["x"]
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("pipeline", str(path), "--dry-run")
    assert proc.returncode == 2 and "documentz" in proc.stderr and "Traceback" not in proc.stderr


def test_pipeline_runs_skips_and_redoes_what_changed(tmp_path, tiny_checkpoint, user_docs):
    recipe = _recipe(tmp_path, tiny_checkpoint, user_docs)
    first = run_cli("pipeline", str(recipe), "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    statuses = _statuses(first.stdout)
    assert set(statuses.values()) == {"ran"}, statuses
    assert {"base", "prepare", "qa", "pretrain", "sft", "pairs", "align", "merge"} <= set(statuses)
    run_dir = tmp_path / "run"
    run = json.loads((run_dir / "run.json").read_text())
    assert [s["name"] for s in run["stages"]] == list(statuses)
    assert (run_dir / "merged" / "slmforge.json").is_file()

    again = run_cli("pipeline", str(recipe), "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert set(_statuses(again.stdout).values()) == {"skipped"}

    dry = run_cli("pipeline", str(recipe), "--dry-run", "--json")
    assert set(_statuses(dry.stdout).values()) == {"would-skip"}

    with open(user_docs / "guide.md", "a") as handle:
        handle.write("\n## How do I drain the pump?\n\nOpen the drain plug at the bottom and tilt the unit.\n")
    plan = _statuses(run_cli("pipeline", str(recipe), "--dry-run", "--json").stdout)
    assert plan["base"] == "would-skip" and plan["prepare"] == "would-run" and plan["merge"] == "would-run"
    redo = run_cli("pipeline", str(recipe), "--json")
    assert redo.returncode == 0, redo.stderr[-2000:]
    statuses = _statuses(redo.stdout)
    assert statuses["base"] == "skipped"
    assert statuses["prepare"] == "ran" and statuses["pretrain"] == "ran" and statuses["merge"] == "ran"


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies waiting for a reaper do not count)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            live.append(int(stat.parent.name))
    return live


def _pipeline_inside_pretrain(tmp_path: Path, recipe: Path) -> subprocess.Popen:
    """A pipeline run in its own process group, once its pretrain stage has started."""
    state = tmp_path / "run" / ".pipeline" / "prepare.json"
    proc = subprocess.Popen([sys.executable, "-m", "slmforge.cli", "pipeline", str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    pretrain_log = tmp_path / "run" / "logs" / "pretrain.log"
    while not pretrain_log.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # now inside pretrain
    return proc


def test_sigterm_to_the_pipeline_stops_its_running_stage(tmp_path, tiny_checkpoint, user_docs):
    proc = _pipeline_inside_pretrain(tmp_path, _recipe(tmp_path, tiny_checkpoint, user_docs, short=True))
    assert _live_group_members(proc.pid), "no stage was running"
    proc.send_signal(signal.SIGTERM)  # the pipeline process only, as `kill PID` does
    proc.wait(timeout=60)
    deadline = time.time() + 20
    while _live_group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _live_group_members(proc.pid), "the stage went on training after the pipeline was terminated"
    assert not (tmp_path / "run" / ".pipeline" / "pretrain.json").exists()


def test_pipeline_killed_mid_stage_completes_on_rerun(tmp_path, tiny_checkpoint, user_docs):
    recipe = _recipe(tmp_path, tiny_checkpoint, user_docs, short=True)
    state = tmp_path / "run" / ".pipeline" / "prepare.json"
    proc = _pipeline_inside_pretrain(tmp_path, recipe)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10  # the stage process (forked from the pipeline's warm server) dies with the group
    while _live_group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _live_group_members(proc.pid), "a stage process outlived the killed pipeline"
    assert state.exists(), "the pipeline never finished its prepare stage"
    assert not (tmp_path / "run" / ".pipeline" / "pretrain.json").exists(), "the kill came after pretrain finished"
    rerun = run_cli("pipeline", str(recipe), "--json")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    statuses = _statuses(rerun.stdout)
    assert statuses["prepare"] == "skipped" and statuses["qa"] == "skipped" and statuses["pretrain"] == "ran"
    assert not list((tmp_path / "run").glob("*.partial-*"))


@pytest.mark.parametrize("recipe", ["recipe.yaml", "recipe-quick.yaml"])
def test_shipped_demo_recipes_plan_every_stage(recipe: str, tmp_path: Path):
    """The demo's recipes stay valid as the verbs' options change (a typo would only show at stage N)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "python-docs" / recipe
    proc = run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[0] for line in proc.stdout.splitlines() if "would-run" in line]
    tuned = ["retriever"] if recipe == "recipe.yaml" else []  # the full demo tunes the embedder, the quick one not
    assert planned[:11 + len(tuned)] == ["base", "prepare", "qa", *tuned, "export:baseline", "bundle:baseline", "rag",
                                         "pretrain", "sft", "pairs", "align", "merge"]
    assert sum(name.startswith("export:") for name in planned) == 4
    assert planned[-4:] == ["answer", "eval", "bench", "report"]
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    plan = json.loads(run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"), "--json").stdout)
    command = {s["name"]: s["command"] for s in plan["stages"]}
    # SFT learns from the runtime's own prompt; adapted bundles reuse the baseline's index; eval judges against it
    assert "rag/sft.jsonl" in command["sft"] and "bundles/base-model" in command["rag"]
    assert all("--index-from" in c and "bundles/base-model" in c for n, c in command.items() if n.startswith("bundle:")
               and n != "bundle:baseline")
    assert "bundles/raspberry-pi-5-8gb" in command["eval"] and "--baseline" in command["eval"]
    # the gate reads the held-out split, then the recipe's documents, until it has its eval_tokens
    for name in (n for n in command if n.startswith("export:")):
        assert command[name].count("--heldout") == 2 and "data/heldout.jsonl --heldout" in command[name], name
    bench = next(s["command"] for s in plan["stages"] if s["name"] == "bench")
    assert "--heldout" in bench and "qa.heldout.jsonl" in bench  # quality measured next to speed
    timed = [b for b in ("raspberry-pi-5-8gb", "android-midrange-8gb", "laptop-x86-16gb") if f"bundles/{b}" in bench]
    assert timed == (["raspberry-pi-5-8gb", "android-midrange-8gb"] if recipe == "recipe-quick.yaml" else
                     ["raspberry-pi-5-8gb", "android-midrange-8gb", "laptop-x86-16gb"])


def test_gemma_recipe_plans_every_stage_or_says_how_to_get_the_model(tmp_path: Path):
    """recipe-gemma-quick.yaml names a GGUF only `make gemma-model` fetches: planned when present, one line when not."""
    path = Path(__file__).resolve().parents[1] / "examples" / "python-docs" / "recipe-gemma-quick.yaml"
    model = Path(yaml.safe_load(path.read_text())["base_model"]).expanduser()
    proc = run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"))
    if not model.exists():
        assert proc.returncode == 2 and "make gemma-model" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        return
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[0] for line in proc.stdout.splitlines() if "would-run" in line]
    # the baseline and the two profiles whose choices differ (Pi 5: Q8_0, phone: footprint); no DPO or merge
    assert planned[0] == "base" and planned[-1] == "report" and sum(n.startswith("export:") for n in planned) == 3
    assert "sft" in planned and "align" not in planned and "merge" not in planned


def test_bench_bundles_must_name_exported_profiles(tmp_path: Path):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "python-docs" / "recipe-quick.yaml")
                          .read_text())
    data["documents"] = [str(Path(__file__).resolve().parents[1] / "examples" / "python-docs" / "docs" / "faq")]
    data["stages"]["bench"]["bundles"] = ["iphone-15"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "stages.bench.bundles: 'iphone-15'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _demo_recipe_with(tmp_path: Path, **stages: dict) -> Path:
    """The shipped demo recipe with some stage sections replaced, written next to its documents' copy."""
    demo = Path(__file__).resolve().parents[1] / "examples" / "python-docs" / "recipe.yaml"
    data = yaml.safe_load(demo.read_text())
    data["documents"] = [str(demo.parent / "docs")]
    data["stages"].update(stages)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_eval_takes_the_users_own_questions(tmp_path: Path):
    (tmp_path / "mine.jsonl").write_text('{"question": "How do I copy a file?", "answer": "shutil.copyfile"}\n')
    path = _demo_recipe_with(tmp_path, eval={"qa": "mine.jsonl"})
    plan = json.loads(run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"), "--json").stdout)
    command = {s["name"]: s["command"] for s in plan["stages"]}
    assert str(tmp_path / "mine.jsonl") in command["eval"] and "rag/heldout.jsonl" not in command["eval"]
    path = _demo_recipe_with(tmp_path, eval={"qa": "missing.jsonl"})
    proc = run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "stages.eval.qa" in proc.stderr and "not found" in proc.stderr, proc.stderr


def test_without_rag_sft_trains_on_bare_pairs_and_eval_uses_the_qa_heldout(tmp_path: Path):
    path = _demo_recipe_with(tmp_path, rag={"enabled": False})
    plan = json.loads(run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"), "--json").stdout)
    command = {s["name"]: s["command"] for s in plan["stages"]}
    assert "rag" not in command and "qa/qa.jsonl" in command["sft"]
    assert "qa/qa.heldout.jsonl" in command["eval"] and "bundle:baseline" in command


def test_the_retriever_stage_feeds_every_export_and_holds_out_the_eval_documents(tmp_path: Path):
    path = _demo_recipe_with(tmp_path)
    plan = json.loads(run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"), "--json").stdout)
    command = {s["name"]: s["command"] for s in plan["stages"]}
    assert "train retriever" in command["retriever"] and "--heldout" in command["retriever"]
    assert "qa/qa.heldout.jsonl" in command["retriever"]  # eval's questions come from documents it never trained on
    exports = [c for n, c in command.items() if n.startswith("export:")]
    assert len(exports) == 4 and all(f"--embedder-source {tmp_path / 'run' / 'retriever'}" in c for c in exports)
    path = _demo_recipe_with(tmp_path, retriever={"enabled": False})
    plan = json.loads(run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"), "--json").stdout)
    assert not any("--embedder-source" in s["command"] for s in plan["stages"])
    path = _demo_recipe_with(tmp_path, retriever={"embedder_source": "x"})
    proc = run_cli("pipeline", str(path), "--dry-run", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "stages.retriever.embedder_source" in proc.stderr, proc.stderr
