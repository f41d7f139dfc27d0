"""Recipes are checked as strictly as the verbs they call: types, profile names, placeholders,
duplicate keys, nesting, and what `enabled: false` does to the plan (issue 19, case 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.pipeline_plan import PlanBuilder
from slmforge.recipe import load_recipe
from tests.conftest import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python-docs"


def _write(tmp_path: Path, change=None, text: str | None = None) -> Path:
    """The quick demo recipe (FAQ documents), changed by ``change(data)``, or ``text`` as given."""
    path = tmp_path / "recipe.yaml"
    if text is None:
        data = yaml.safe_load((EXAMPLE / "recipe-quick.yaml").read_text())
        data["documents"] = [str(EXAMPLE / "docs" / "faq")]
        data["output_dir"] = str(tmp_path / "run")
        if change:
            change(data)
        text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path


def _plan(path: Path) -> dict[str, list[str]]:
    """Stage name → argv of a dry-run plan."""
    return {s.name: s.argv for s in PlanBuilder(load_recipe(path), path).build()}


def _stage(section: str, **values):
    def change(data: dict) -> None:
        data["stages"].setdefault(section, {}).update(values)
    return change


@pytest.mark.parametrize("value, problem", [
    (2.7, "expected a whole number, got 2.7"),
    (True, "expected one integer value, got true"),
    ([3], "expected one integer value, got a list"),
    (None, "expected one integer value, got nothing"),
])
def test_stage_option_types_are_as_strict_as_the_flag(tmp_path: Path, value, problem):
    with pytest.raises(UserError, match=rf"recipe: stages.pretrain.max_steps: {problem}"):
        _plan(_write(tmp_path, _stage("pretrain", max_steps=value)))


def test_whole_float_is_an_int_and_a_flag_wants_true_or_false(tmp_path: Path):
    assert "3" in _plan(_write(tmp_path, _stage("pretrain", max_steps=3.0)))["pretrain"]
    with pytest.raises(UserError, match="stages.export.no_embedder: expected true or false"):
        _plan(_write(tmp_path, _stage("export", no_embedder="yes")))


@pytest.mark.parametrize("key, value", [("seed", True), ("seed", "3")])
def test_top_level_types_are_strict(tmp_path: Path, key, value):
    with pytest.raises(UserError, match=f"field '{key}'"):
        load_recipe(_write(tmp_path, lambda d: d.update({key: value})))


def test_weights_are_numbers_not_booleans(tmp_path: Path):
    with pytest.raises(UserError, match="stages.merge.weights.0"):
        load_recipe(_write(tmp_path, _stage("merge", merge_method="linear", weights=[True, 0.5])))


def test_profiles_must_be_known_or_profile_files(tmp_path: Path):
    with pytest.raises(UserError, match=r"profiles: '../../../etc/passwd' is neither a known profile"):
        _plan(_write(tmp_path, _stage("export", profiles=["../../../etc/passwd"])))
    shipped = Path(__file__).resolve().parents[1] / "device_profiles" / "iphone-15.yaml"
    mine = tmp_path / "profiles" / "my-board.yaml"
    mine.parent.mkdir()
    mine.write_text(shipped.read_text().replace("name: iphone-15", "name: my-board"))
    def mine_only(data: dict) -> None:
        data["stages"]["export"]["profiles"] = ["profiles/my-board.yaml", "host"]
        data["stages"]["bench"]["bundles"] = ["my-board"]

    plan = _plan(_write(tmp_path, mine_only))
    export = plan["export:my-board"]
    assert export[export.index("--profile") + 1] == str(mine) and str(tmp_path / "run" / "export" / "my-board") in export


def test_unknown_placeholder_in_output_dir_is_one_line(tmp_path: Path):
    path = _write(tmp_path, lambda d: d.update(output_dir="runs/{nope}"))
    proc = run_cli("pipeline", str(path), "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "output_dir: 'runs/{nope}'" in proc.stderr, proc.stderr


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_very_deep_nesting_is_one_line(tmp_path: Path, suffix: str):
    path = tmp_path / f"recipe{suffix}"
    path.write_text('{"name": "x", "stages": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = run_cli("pipeline", str(path), "--dry-run")
    assert proc.returncode == 2 and "internal error" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "nested too deeply" in proc.stderr


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path):
    text = _write(tmp_path).read_text().replace("seed: 0\n", "seed: 0\nname: other\n")
    lines = text.splitlines()
    first, second = (i + 1 for i, line in enumerate(lines) if line.startswith("name:"))
    with pytest.raises(UserError, match=rf"line {second} .*duplicate key 'name' \(first given on line {first}\)"):
        load_recipe(_write(tmp_path, text=text))
    nested = "stages:\n  pretrain: {max_steps: 2, max_steps: 3}\n"
    with pytest.raises(UserError, match="duplicate key 'max_steps'"):
        load_recipe(_write(tmp_path, text=nested))


def _off(*stages: str, **explicit: bool):
    def change(data: dict) -> None:
        for stage in stages:
            data["stages"].setdefault(stage, {})["enabled"] = False
        for stage, on in explicit.items():
            data["stages"].setdefault(stage, {})["enabled"] = on
    return change


@pytest.mark.parametrize("disabled, needed_by", [
    (("qa",), "sft"), (("prepare",), "pretrain"), (("pairs",), "align"), (("export",), "answer"),
    (("bundle",), "bench"), (("export",), "bundle"),
])
def test_disabling_a_stage_others_need_is_refused(tmp_path: Path, disabled, needed_by):
    explicit = {needed_by: True} if needed_by in ("answer", "bench", "bundle") else {}
    with pytest.raises(UserError, match=rf"stages.{disabled[0]}.enabled is false, but stages.{needed_by} needs"):
        _plan(_write(tmp_path, _off(*disabled, **explicit)))


def test_distill_without_compress_is_refused(tmp_path: Path):
    with pytest.raises(UserError, match="stages.compress.enabled is false, but stages.distill needs"):
        _plan(_write(tmp_path, _off(distill=True)))


def test_disabled_stages_are_honoured_where_later_stages_can_do_without(tmp_path: Path):
    plan = _plan(_write(tmp_path, _off("qa", "sft", "align", "merge")))
    assert "qa" not in plan and "sft" not in plan and "pairs" not in plan
    assert "--qa" not in plan["bench"] and "--heldout" in plan["bench"]
    plan = _plan(_write(tmp_path, _off("prepare", "qa", "pretrain", "sft", "align", "merge")))
    assert "prepare" not in plan and "qa" not in plan
    gated = {name: [argv[i + 1] for i, a in enumerate(argv) if a == "--heldout"]
             for name, argv in plan.items() if name.startswith(("export", "bench"))}
    # no held-out split without prepare: export's gate reads the recipe's own documents, bench none
    assert gated and all(texts == ([str(EXAMPLE / "docs" / "faq")] if name.startswith("export") else [])
                         for name, texts in gated.items()), gated
    plan = _plan(_write(tmp_path, _off("bundle")))
    assert not any(name.startswith(("bundle", "answer", "bench", "report")) for name in plan)
