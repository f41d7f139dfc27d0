"""Run a list of stages as subprocesses, skipping those whose inputs have not changed.

A stage is up to date when its output exists and the fingerprint recorded after its last
successful run (argv + options + sha256 of every input) equals the current one. Each stage
runs `slmforge <verb> ...` in a child process (files are the interfaces, and memory from
training is returned to the OS between stages; slmforge/stage_process.py forks it from a server
that imported torch once); its output goes to `logs/<stage>.log`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json, atomic_write_text, sha256_path
from slmforge.stage_process import run_stage


@dataclass
class Stage:
    """One step of a pipeline: a CLI invocation with declared inputs and one output."""

    name: str
    argv: list[str]
    inputs: list[Path]
    output: Path
    options: dict[str, Any] = field(default_factory=dict)
    metric: Callable[[Path], str | None] | None = None
    depends_on: list[str] = field(default_factory=list)
    stdout_to: Path | None = None  # for verbs whose result is what they print (`run --json`)
    writes: dict[Path, str] = field(default_factory=dict)  # files made from the recipe (the merge YAML): written
    # when the stage runs, never when planning; their text is in ``options``, so the fingerprint covers it


@dataclass
class StageOutcome:
    name: str
    status: str  # ran | skipped | failed | would-run | would-skip | not-selected
    seconds: float = 0.0
    metric: str | None = None
    reason: str = ""
    command: str | None = None  # set by --dry-run: what would be run


class PipelineRunner:
    def __init__(self, run_dir: Path, stages: list[Stage]) -> None:
        self.run_dir = run_dir
        self.stages = stages
        self.state_dir = run_dir / ".pipeline"
        self.log_dir = run_dir / "logs"

    # -- fingerprints -------------------------------------------------------
    def fingerprint(self, stage: Stage) -> str | None:
        """Hash of argv, options and input contents; None if an input does not exist yet."""
        hashes = {}
        for path in stage.inputs:
            if not path.exists():
                return None
            hashes[str(path)] = sha256_path(path)
        blob = json.dumps({"argv": stage.argv, "options": stage.options, "inputs": hashes}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _state_path(self, stage: Stage) -> Path:
        return self.state_dir / f"{stage.name.replace(':', '--')}.json"

    def recorded(self, stage: Stage) -> dict[str, Any] | None:
        path = self._state_path(stage)
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def up_to_date(self, stage: Stage) -> tuple[bool, str]:
        if not stage.output.exists():
            return False, "no output yet"
        state = self.recorded(stage)
        if state is None:
            return False, "no record of a finished run"
        current = self.fingerprint(stage)
        if current is None:
            return False, "an input is missing"
        if state.get("fingerprint") != current:
            return False, "inputs or options changed"
        return True, "inputs unchanged"

    # -- running ------------------------------------------------------------
    def select(self, from_stage: str | None, until_stage: str | None) -> list[Stage]:
        """Stages from ``from_stage`` to ``until_stage`` inclusive ('export' names every export:*)."""
        names = [s.name for s in self.stages]

        def matches(name: str) -> list[int]:
            found = [i for i, n in enumerate(names) if n == name or n.split(":")[0] == name]
            if not found:
                known = ", ".join(dict.fromkeys(n.split(":")[0] for n in names))
                raise UserError(f"unknown stage '{name}'; stages of this recipe: {known}")
            return found

        start = matches(from_stage)[0] if from_stage else 0
        end = matches(until_stage)[-1] if until_stage else len(names) - 1
        if end < start:
            raise UserError(f"--until {until_stage} comes before --from {from_stage}")
        return self.stages[start: end + 1]

    def forced_by(self, from_stage: str | None) -> set[str]:
        if not from_stage:
            return set()
        return {s.name for s in self.stages if s.name == from_stage or s.name.split(":")[0] == from_stage}

    def plan(self, selected: list[Stage], forced: set[str]) -> list[StageOutcome]:
        """What a run would do, without doing it (`--dry-run`)."""
        outcomes: list[StageOutcome] = []
        will_change: set[str] = set()
        for stage in selected:
            upstream_changes = will_change.intersection(stage.depends_on)
            if stage.name in forced:
                outcomes.append(StageOutcome(stage.name, "would-run", reason="forced by --from"))
            elif upstream_changes:
                outcomes.append(StageOutcome(stage.name, "would-run",
                                             reason=f"after {', '.join(sorted(upstream_changes))} re-runs"))
            else:
                fresh, why = self.up_to_date(stage)
                outcomes.append(StageOutcome(stage.name, "would-skip" if fresh else "would-run", reason=why))
            outcomes[-1].command = shlex.join(["slmforge", *stage.argv])
            if outcomes[-1].status == "would-run":
                will_change.add(stage.name)
        return outcomes

    def run(self, selected: list[Stage], forced: set[str]) -> list[StageOutcome]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        outcomes: list[StageOutcome] = []
        bar = tqdm(total=len(selected), unit="stage", desc="pipeline", dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} stages [{elapsed}<{remaining}] {postfix}")
        try:
            for stage in selected:
                bar.set_description(stage.name)
                fresh, why = (False, "forced by --from") if stage.name in forced else self.up_to_date(stage)
                if fresh:
                    metric = self.recorded(stage).get("metric")  # type: ignore[union-attr]
                    outcomes.append(StageOutcome(stage.name, "skipped", 0.0, metric, why))
                    bar.update(1)
                    continue
                outcome = self._run_one(stage, bar)
                outcomes.append(outcome)
                bar.update(1)
        finally:
            bar.close()
        return outcomes

    def _run_one(self, stage: Stage, bar: tqdm) -> StageOutcome:
        for stale in stage.output.parent.glob(f"{stage.output.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        for path, text in stage.writes.items():
            atomic_write_text(path, text)
        log_path = self.log_dir / f"{stage.name.replace(':', '--')}.log"
        log_path.write_text("$ slmforge " + " ".join(stage.argv) + "\n", encoding="utf-8")
        captured = stage.stdout_to.with_name(stage.stdout_to.name + ".partial-out") if stage.stdout_to else None
        started = time.perf_counter()
        done = threading.Event()
        tail = threading.Thread(target=_tail, args=(log_path, bar, done), daemon=True)
        tail.start()
        try:
            code = run_stage(stage.argv, log_path, captured)
        finally:
            done.set()
            tail.join(timeout=5)
        if captured is not None:
            if code == 0:
                captured.replace(stage.stdout_to)  # type: ignore[arg-type]
            else:
                captured.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        if code != 0:
            last = _last_error_line(log_path)
            raise UserError(f"stage '{stage.name}' failed (exit {code}): {last} — full log: {log_path}", code=code or 1)
        metric = None
        if stage.metric is not None:
            try:
                metric = stage.metric(stage.output)
            except (OSError, KeyError, ValueError, TypeError, json.JSONDecodeError):
                metric = None
        atomic_write_json(self._state_path(stage), {
            "stage": stage.name, "fingerprint": self.fingerprint(stage), "output": str(stage.output),
            "argv": stage.argv, "seconds": round(seconds, 1), "metric": metric,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return StageOutcome(stage.name, "ran", seconds, metric)


def _tail(log_path: Path, bar: tqdm, done: threading.Event) -> None:
    """Show the stage's latest progress line (its log's last non-empty line) on the pipeline bar."""
    with open(log_path, encoding="utf-8", errors="replace") as log:
        while True:
            chunk = log.read()
            lines = [ln.strip() for ln in chunk.replace("\r", "\n").splitlines() if ln.strip()]
            if lines:
                bar.set_postfix_str(lines[-1][-70:], refresh=True)
            elif done.is_set():
                return
            else:
                time.sleep(0.25)


def _last_error_line(log_path: Path) -> str:
    lines = [ln.strip().split("\r")[-1] for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "internal error:")):
            return line
    return lines[-1] if lines else "(no output)"
