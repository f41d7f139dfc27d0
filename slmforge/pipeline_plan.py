"""Turn a recipe into the ordered list of pipeline stages by walking the table of stage specs.

The table (``slmforge/pipeline_stages.py``) knows the flow of DESIGN.md: base → prepare → qa →
[baseline export + bundle → rag] → pretrain → sft → pairs → align → merge → [compress → distill] →
export (per profile) → bundle (per profile) → answer → eval → bench → report. This module walks it:
it asks each spec whether it runs for this recipe, lets it wire its paths to what earlier stages
made, and adds it through one ``add()`` that checks the recipe's options against the verb's.
Planning reads the recipe and writes nothing; a file a stage needs from the recipe (the merge YAML)
is written by the runner when that stage runs.
"""

from __future__ import annotations

from pathlib import Path

from slmforge.errors import UserError
from slmforge.pipeline_runner import Stage
from slmforge.pipeline_stages import PLAN, Made, PerProfile, StageSpec, explicitly_enabled
from slmforge.recipe import Recipe, StageOptions
from slmforge.stage_options import options_to_argv


def output_dir_of(recipe: Recipe) -> str:
    """``output_dir`` with ``{name}`` replaced; any other placeholder is a one-line error, not a KeyError."""
    if "{" in recipe.output_dir.replace("{name}", "") or "}" in recipe.output_dir.replace("{name}", ""):
        raise UserError(f"recipe: output_dir: '{recipe.output_dir}' has a placeholder other than {{name}} "
                        "(the only one replaced); remove the braces")
    return recipe.output_dir.replace("{name}", recipe.name)


def export_profiles(entries: list[str], base_dir: Path) -> dict[str, str]:
    """Profile name (a safe folder name) → what ``export --profile`` gets, for each recipe entry.

    An entry is a shipped profile name, ``host``, or a profile YAML file (relative to the recipe) whose
    ``name`` equals its file name; anything else (``../../etc/passwd``) is refused, so the plan's
    ``export/<name>`` and ``bundles/<name>`` folders always stay inside the run folder.
    """
    from slmforge.profiles import load_profile_file, profile_paths

    known = profile_paths()
    out: dict[str, str] = {}
    for entry in entries:
        candidate = base_dir / entry
        if entry in known or entry == "host":
            name, arg = entry, entry
        elif candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            name, arg = load_profile_file(candidate).name, str(candidate.resolve())
        else:
            raise UserError(f"recipe: stages.export.profiles: '{entry}' is neither a known profile "
                            f"({', '.join([*known, 'host'])}) nor a profile YAML file next to the recipe")
        if name in out:
            raise UserError(f"recipe: stages.export.profiles: '{name}' is listed twice")
        out[name] = arg
    return out


class PlanBuilder:
    """Builds the stage list for one recipe file; holds what the specs' wiring reads."""

    def __init__(self, recipe: Recipe, recipe_path: Path, out_override: Path | None = None) -> None:
        self.recipe = recipe
        self.base_dir = recipe_path.resolve().parent
        self.run_dir = out_override or (self.base_dir / output_dir_of(recipe)).resolve()
        self.stages: list[Stage] = []
        self.made: dict[str, list[Made]] = {}  # what later stages take ("model", "sft data", …), oldest first
        self.docs: list[Path] = []
        self.profiles: dict[str, str] = {}

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def documents(self) -> list[Path]:
        docs = [(self.base_dir / d).resolve() for d in self.recipe.documents]
        for doc in docs:
            if not doc.exists():
                raise UserError(f"recipe: documents: {doc} not found")
        return docs

    def last(self, kind: str) -> Made | None:
        """The latest output of this kind an earlier stage made, or None."""
        made = self.made.get(kind)
        return made[-1] if made else None

    def planned(self, name: str) -> bool:
        return any(stage.name == name for stage in self.stages)

    def output_of(self, name: str) -> Path:
        return next(stage.output for stage in self.stages if stage.name == name)

    def add(self, spec: StageSpec, profile: str | None = None) -> None:
        """The one way a stage enters the plan: wired by its spec, its recipe options checked and rendered."""
        name = f"{spec.name}:{profile}" if profile else spec.name
        wiring = spec.wire(self, profile)
        section = getattr(self.recipe.stages, spec.section) if spec.section else None
        opts = section.cli_options() if isinstance(section, StageOptions) else {}
        argv = [*spec.verb, *wiring.args, *(options_to_argv(spec.section, spec.verb, opts) if opts else [])]
        self.stages.append(Stage(name, argv, wiring.inputs, wiring.output, {**opts, **wiring.settings}, spec.summary,
                                 wiring.depends_on, stdout_to=wiring.stdout_to, writes=wiring.writes))
        if spec.makes:
            self.made.setdefault(spec.makes, []).append(Made(wiring.output, name))

    def check_enabled(self) -> None:
        """Every ``enabled: false`` is honoured, or refused when an enabled stage cannot do without it."""
        s = self.recipe.stages
        needs = [  # (stage, runs?, stage it needs, what it needs from it)
            ("pretrain", s.pretrain.enabled, "prepare", "training text"),
            ("sft", s.sft.enabled, "qa", "Q&A pairs"), ("retriever", s.retriever.enabled, "qa", "Q&A pairs"), ("sft", s.sft.enabled, "prepare", "held-out text"),
            ("align", s.align.enabled, "pairs", "preference pairs"), ("pairs", s.align.enabled, "qa", "questions"),
            ("compress", s.compress.enabled, "prepare", "calibration text"),
            ("distill", s.distill.enabled, "compress", "pruned student"),
        ]
        for stage, runs, need, what in needs:
            if runs and not getattr(s, need).enabled:
                raise UserError(f"recipe: stages.{need}.enabled is false, but stages.{stage} needs its {what}; "
                                f"set stages.{stage}.enabled: false too, or enable {need}")
        # bundle, answer and bench follow the exports; only an explicit 'enabled: true' insists on them
        for stage, after in (("bundle", ("export",)), ("answer", ("export", "bundle")), ("bench", ("export", "bundle")),
                             ("rag", ("export", "bundle", "qa")), ("eval", ("export", "bundle"))):
            off = next((need for need in after if not getattr(s, need).enabled), None)
            if off and explicitly_enabled(getattr(s, stage)):
                raise UserError(f"recipe: stages.{off}.enabled is false, but stages.{stage} needs its output; "
                                f"set stages.{stage}.enabled: false too, or enable {off}")

    def build(self) -> list[Stage]:
        s = self.recipe.stages
        self.check_enabled()
        self.docs = self.documents()
        self.profiles = export_profiles(s.export.profiles, self.base_dir) if s.export.enabled else {}
        for row in PLAN:
            instances = ([(spec, p) for p in self.profiles for spec in row.specs] if isinstance(row, PerProfile)
                         else [(row, None)])
            for spec, profile in instances:
                if spec.runs(self):
                    self.add(spec, profile)
        return self.stages
