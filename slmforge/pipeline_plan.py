"""Turn a recipe into the ordered list of pipeline stages (CLI invocations with inputs/outputs).

This module knows the flow of DESIGN.md: base → prepare → qa → [baseline export + bundle →
rag] → pretrain → sft → pairs → align → merge → [compress → distill] → export (per profile) →
bundle (per profile) → answer → eval → bench → report. The baseline is the untuned base model
exported for the first profile and bundled with the documents: ``rag`` renders SFT examples
through its retriever and prompt, the adapted bundles reuse its index, and ``eval`` judges the
first adapted bundle against it. It checks every stage option against the options of the CLI
verb that will run it, so a typo in a recipe fails before any work starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from slmforge.errors import UserError
from slmforge.pipeline_runner import Stage
from slmforge.recipe import AnswerOptions, Recipe, StageOptions

STAGE_VERBS: dict[str, tuple[str, ...]] = {
    "prepare": ("data", "prepare"),
    "qa": ("data", "qa"),
    "rag": ("data", "rag"),
    "pretrain": ("train", "pretrain"),
    "sft": ("train", "sft"),
    "pairs": ("data", "pairs"),
    "align": ("train", "align"),
    "compress": ("compress",),
    "distill": ("distill",),
    "export": ("export",),
    "bundle": ("bundle",),
    "eval": ("eval",),
    "bench": ("bench", "run"),
}
# Options the pipeline sets itself (paths and wiring); a recipe may not override them.
WIRED = {"model", "data", "out", "docs", "export", "teacher", "student", "qa", "kto_out", "profile", "heldout",
         "json", "as_json", "resume", "emulate", "heldout_text", "reuse", "index_from", "bundle_path", "qa_file",
         "baseline", "heldout_out"}


def _command_for(path: tuple[str, ...]) -> click.Command:
    from slmforge.cli import cli

    ctx = click.Context(cli)
    command: click.Command | None = cli
    for part in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, part)
        if command is None:
            raise UserError(f"slmforge {' '.join(path)} is not available in this install")
    return command


def options_to_argv(stage: str, options: dict[str, Any]) -> list[str]:
    """Check recipe options against the verb's click options and render them as flags."""
    command = _command_for(STAGE_VERBS[stage])
    params = {p.name: p for p in command.params if isinstance(p, click.Option)}
    argv: list[str] = []
    for key, value in options.items():
        if key in WIRED:
            raise UserError(f"recipe: stages.{stage}.{key}: set by the pipeline itself; remove it from the recipe")
        param = params.get(key)
        if param is None:
            known = ", ".join(sorted(k for k in params if k not in WIRED))
            raise UserError(f"recipe: stages.{stage}.{key}: unknown option for 'slmforge {' '.join(STAGE_VERBS[stage])}'"
                            f" (known: {known})")
        values = value if isinstance(value, list) and param.multiple else [value]
        for raw in values:
            item = _yaml_value_for(param, raw, f"recipe: stages.{stage}.{key}")
            try:
                param.type.convert(item, param, None)
            except click.BadParameter as exc:
                raise UserError(f"recipe: stages.{stage}.{key}: {exc.message}") from None
            flag = max(param.opts, key=len)
            if param.is_flag:
                if item:
                    argv.append(flag)
                elif param.secondary_opts:
                    argv.append(max(param.secondary_opts, key=len))
            else:
                argv += [flag, str(item)]
    return argv


def _yaml_value_for(param: click.Option, value: Any, where: str) -> Any:
    """``value`` as the verb's option would receive it, refusing YAML types the command line could not mean.

    click converts leniently (``int(2.7) == 2``, ``int(True) == 1``, a list becomes its text); a recipe
    must be as strict as typing the flag: a whole number where an integer belongs, true/false for a flag.
    """
    shown = json.dumps(value, default=str)
    if param.is_flag or isinstance(param.type, click.types.BoolParamType):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {shown}")
        return value
    if value is None or isinstance(value, (bool, list, dict)):
        kind = "nothing" if value is None else "a list" if isinstance(value, list) else \
            "a mapping" if isinstance(value, dict) else shown
        many = " (a list is only allowed for options that may repeat)" if isinstance(value, list) else ""
        wanted = ("integer" if isinstance(param.type, click.types.IntParamType) else
                  "number" if isinstance(param.type, click.types.FloatParamType) else "text")
        raise UserError(f"{where}: expected one {wanted} value, got {kind}{many}")
    if isinstance(param.type, click.types.IntParamType) and isinstance(value, float):
        if not value.is_integer():
            raise UserError(f"{where}: expected a whole number, got {shown}")
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(param.type, (click.types.IntParamType,
                                                                         click.types.FloatParamType)):
        return str(value)
    return value


def _json_metric(relpath: str, fmt: Callable[[dict], str | None]) -> Callable[[Path], str | None]:
    def read(output: Path) -> str | None:
        # a folder's file, or a file's sibling (an output file's manifest); "" is the output file itself
        path = output / relpath if output.is_dir() else output.parent / relpath if relpath else output
        return fmt(json.loads(path.read_text()))

    return read


def _ppl_metric(m: dict) -> str | None:
    metrics = m.get("metrics", {})
    before = metrics.get("heldout_ppl_before") or metrics.get("ppl_before")
    after = metrics.get("heldout_ppl_after") or metrics.get("ppl_after") or metrics.get("heldout_ppl")
    if before and after:
        return f"held-out ppl {before:.2f} → {after:.2f}"
    if after:
        return f"held-out ppl {after:.2f}"
    return None


def _sft_metric(m: dict) -> str | None:
    metrics = m.get("metrics", {})
    parts = [_ppl_metric(m)]
    before, after = metrics.get("heldout_loss_before"), metrics.get("heldout_loss_after")
    if before is not None and after is not None:
        parts.append(f"answer loss {before:.3f} → {after:.3f}")
    return ", ".join(p for p in parts if p) or None


def _align_metric(m: dict) -> str | None:
    metrics = m.get("metrics", {})
    before, after = metrics.get("margin_before"), metrics.get("margin_after")
    if before is None or after is None:
        return None
    reward = metrics.get("reward_accuracy_after")
    return (f"{metrics.get('method', '')} held-out margin {before:.2f} → {after:.2f}, "
            f"accuracy {metrics.get('accuracy_before', 0):.2f} → {metrics.get('accuracy_after', 0):.2f}"
            + (f", reward accuracy {reward:.2f}" if reward is not None else "")).strip()


def _lines_metric(label: str) -> Callable[[Path], str | None]:
    def read(output: Path) -> str | None:
        with output.open(encoding="utf-8") as handle:
            return f"{sum(1 for line in handle if line.strip())} {label}"

    return read


def _bundle_metric(m: dict) -> str | None:
    model, index = m.get("model", {}), m.get("index", {})
    return f"{model.get('quant')} + {index.get('chunks', 0)} chunks from {index.get('documents', 0)} documents"


def _benched_bundles(chosen: list[str] | None, profiles: list[str], bundles: list[Path]) -> dict[str, Path]:
    """Profile → bundle dir of the bundles the bench stage times (all of them unless the recipe names some)."""
    by_profile = dict(zip(profiles, bundles))
    for name in chosen or []:
        if name not in by_profile:
            raise UserError(f"recipe: stages.bench.bundles: '{name}' is not one of stages.export.profiles "
                            f"({', '.join(profiles)})")
    return {name: by_profile[name] for name in chosen} if chosen else by_profile


def _bench_metric(output: Path) -> str | None:
    for line in output.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("mode") == "measured":
            metrics = row.get("metrics", {})
            tg, pp = metrics.get("tg128_tok_s", {}).get("value"), metrics.get("pp512_tok_s", {}).get("value")
            if tg and pp:
                ppl, f1 = (metrics.get(name, {}).get("value") for name in ("perplexity", "qa_token_f1"))
                quality = "".join([f", ppl {ppl:.2f}" if ppl else "", f", QA F1 {f1:.3f}" if f1 is not None else ""])
                return f"{row['bundle']['name']} on this host: pp512 {pp:.0f} tok/s, tg128 {tg:.1f} tok/s{quality}"
    return None


def _export_metric(m: dict) -> str | None:
    parts = []
    for a in m.get("artifacts", []):
        ratio = a.get("ppl_ratio")
        parts.append(f"{a['quant']} {a['size_bytes'] / 1e6:.0f} MB" + (f" ppl×{ratio:.3f}" if ratio else ""))
    return ", ".join(parts) or None


def _rag_metric(m: dict) -> str | None:
    metrics = m.get("metrics", {})
    return (f"{metrics.get('examples', 0)} RAG examples ({metrics.get('unanswerable', 0)} unanswerable, "
            f"{metrics.get('dropped_not_retrieved', 0)} generated questions dropped: passage not retrieved)")


def _eval_metric(m: dict) -> str | None:
    return m.get("summary")


def _answer_metric(m: dict) -> str | None:
    text = " ".join(str(m.get("answer", "")).split())
    return f"{len(m.get('citations', []))} citations: {text[:60]}"


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


def _explicitly_enabled(options: StageOptions | AnswerOptions) -> bool:
    return options.enabled and "enabled" in options.model_fields_set


class PlanBuilder:
    """Builds the stage list for one recipe file."""

    def __init__(self, recipe: Recipe, recipe_path: Path, out_override: Path | None = None,
                 dry_run: bool = False) -> None:
        self.recipe = recipe
        self.dry_run = dry_run
        self.base_dir = recipe_path.resolve().parent
        self.run_dir = out_override or (self.base_dir / output_dir_of(recipe)).resolve()
        self.stages: list[Stage] = []

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def documents(self) -> list[Path]:
        docs = [(self.base_dir / d).resolve() for d in self.recipe.documents]
        for doc in docs:
            if not doc.exists():
                raise UserError(f"recipe: documents: {doc} not found")
        return docs

    def add(self, name: str, verb: list[str], inputs: list[Path], output: Path, options: StageOptions | None,
            depends_on: list[str], metric: Callable[[Path], str | None] | None = None, extra: list[str] = ()) -> None:
        opts = options.cli_options() if options is not None else {}
        argv = [*verb, *extra, *(options_to_argv(name.split(":")[0], opts) if opts else [])]
        self.stages.append(Stage(name, argv, inputs, output, opts, metric, depends_on))

    def check_enabled(self) -> None:
        """Every ``enabled: false`` is honoured, or refused when an enabled stage cannot do without it."""
        s = self.recipe.stages
        needs = [  # (stage, runs?, stage it needs, what it needs from it)
            ("pretrain", s.pretrain.enabled, "prepare", "training text"),
            ("sft", s.sft.enabled, "qa", "Q&A pairs"), ("sft", s.sft.enabled, "prepare", "held-out text"),
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
            if off and _explicitly_enabled(getattr(s, stage)):
                raise UserError(f"recipe: stages.{off}.enabled is false, but stages.{stage} needs its output; "
                                f"set stages.{stage}.enabled: false too, or enable {off}")

    def build(self) -> list[Stage]:
        r, s = self.recipe, self.recipe.stages
        self.check_enabled()
        docs = self.documents()
        profiles = export_profiles(s.export.profiles, self.base_dir) if s.export.enabled else {}
        # What later stages read only when the stage that writes it runs (export/bench can do without).
        heldout_args = ["--heldout", str(self.path("data") / "heldout.jsonl")] if s.prepare.enabled else []
        seed = ["--seed", str(r.seed)]
        base = self.path("base")
        if r.base_model == "embedded":
            from slmforge.embedded import embedded_gguf

            source_args, source_inputs = [], [embedded_gguf()]
        else:
            src = (self.base_dir / r.base_model).resolve()
            if not src.exists():
                raise UserError(f"recipe: base_model: {src} not found")
            source_args, source_inputs = [str(src)], [src]
        self.add("base", ["base", "import", *source_args, "--out", str(base)], source_inputs, base, None, [],
                 _json_metric("slmforge.json", lambda m: f"{m['metrics'].get('parameters', 0) / 1e6:.1f}M params"))

        data = self.path("data")
        if s.prepare.enabled:
            self.add("prepare", ["data", "prepare", *map(str, docs), "--out", str(data), *seed], docs, data,
                     s.prepare, [], _json_metric("stats.json",
                                                 lambda m: f"{m.get('train_pieces', m.get('train', '?'))} train / "
                                                           f"{m.get('heldout_pieces', m.get('heldout', '?'))} held-out"))
        qa_dir = self.path("qa")
        qa_inputs = docs + [(self.base_dir / q).resolve() for q in r.qa]
        if s.qa.enabled:
            self.add("qa", ["data", "qa", *map(str, qa_inputs), "--out", str(qa_dir / "qa.jsonl"), *seed], qa_inputs,
                     qa_dir / "qa.jsonl", s.qa, [], _lines_metric("training Q&A pairs"))
        baseline = self._baseline(base, profiles, heldout_args, docs)
        sft_data, sft_data_stage = qa_dir / "qa.jsonl", "qa"
        if baseline is not None and s.rag.enabled and s.qa.enabled:
            sft_data, sft_data_stage = self._rag(baseline, qa_dir, seed)
        model, model_stage = base, "base"
        if s.pretrain.enabled:
            cpt = self.path("cpt")
            self.add("pretrain", ["train", "pretrain", "--model", str(model), "--data", str(data), "--out", str(cpt),
                                  *seed], [model, data], cpt, s.pretrain, [model_stage, "prepare"],
                     _json_metric("slmforge.json", _ppl_metric))
            model, model_stage = cpt, "pretrain"
        cpt_model, cpt_stage = model, model_stage
        if s.sft.enabled:
            sft = self.path("sft")
            self.add("sft", ["train", "sft", "--model", str(model), "--data", str(sft_data), "--out", str(sft),
                             "--heldout-text", str(data / "heldout.jsonl"), *seed],
                     [model, sft_data, data / "heldout.jsonl"], sft,
                     s.sft, [model_stage, sft_data_stage, "prepare"], _json_metric("slmforge.json", _sft_metric))
            model, model_stage = sft, "sft"
        if s.align.enabled:
            prefs = self.path("prefs")
            self.add("pairs", ["data", "pairs", "--qa", str(qa_dir / "qa.jsonl"), "--model", str(model),
                               "--out", str(prefs / "prefs.jsonl"), "--kto-out", str(prefs / "kto.jsonl"), *seed],
                     [model, qa_dir / "qa.jsonl"], prefs / "prefs.jsonl", s.pairs, [model_stage, "qa"],
                     _lines_metric("preference pairs"))
            align = self.path("align")
            method = str(s.align.cli_options().get("method", "dpo"))
            pref_file = prefs / ("kto.jsonl" if method == "kto" else "prefs.jsonl")
            self.add("align", ["train", "align", "--model", str(model), "--data", str(pref_file), "--out", str(align),
                               *seed], [model, pref_file], align, s.align, [model_stage, "pairs"],
                     _json_metric("slmforge.json", _align_metric))
            model, model_stage = align, "align"
        if s.merge.enabled and model != cpt_model and cpt_stage == "pretrain":
            merged = self.path("merged")
            config = self.path("merge.yaml")
            self._write_merge_config(config, cpt_model, model)
            self.add("merge", ["merge", str(config), "--out", str(merged)], [config, cpt_model, model], merged, None,
                     [cpt_stage, model_stage])
            model, model_stage = merged, "merge"
        if s.compress.enabled:
            pruned = self.path("pruned")
            self.add("compress", ["compress", "--model", str(model), "--data", str(data), "--out", str(pruned)],
                     [model, data], pruned, s.compress, [model_stage, "prepare"])
            if s.distill.enabled:
                student = self.path("distilled")
                self.add("distill", ["distill", "--teacher", str(model), "--student", str(pruned), "--data", str(data),
                                     "--out", str(student)], [model, pruned, data], student, s.distill,
                         ["compress", "prepare"])
                model, model_stage = student, "distill"
            else:
                model, model_stage = pruned, "compress"
        bundles: list[Path] = []
        names = list(profiles)
        for profile, profile_arg in profiles.items():
            exp = self.path(f"export/{profile}")
            # Later profiles link what the first export built and measured when they pick the same quant.
            first = names[0]
            reuse = ["--reuse", str(self.path(f"export/{first}"))] if profile != first else []
            prepared = ["prepare"] if s.prepare.enabled else []
            self.add(f"export:{profile}", ["export", "--model", str(model), "--profile", profile_arg, "--out", str(exp),
                                           *heldout_args, *reuse], [model, *([data] if prepared else [])], exp,
                     s.export, [model_stage, *prepared, *([f"export:{first}"] if reuse else [])],
                     _json_metric("export.json", _export_metric))
            if s.bundle.enabled:
                bundle = self.path(f"bundles/{profile}")
                # Bundles start from the baseline's (or the first one's) index: same documents, same embedder.
                index_from, index_stage = ((baseline, "bundle:baseline") if baseline is not None else
                                           (bundles[0], f"bundle:{names[0]}") if bundles else (None, None))
                reuse = ["--index-from", str(index_from)] if index_from else []
                self.add(f"bundle:{profile}", ["bundle", "--export", str(exp), *[a for d in docs for a in ("--docs", str(d))],
                                               "--out", str(bundle), *reuse], [exp, *docs, *([index_from] if index_from else [])],
                         bundle, s.bundle, [f"export:{profile}", *([index_stage] if index_stage else [])],
                         _json_metric("manifest.json", _bundle_metric))
                bundles.append(bundle)
        if bundles and s.answer.enabled:
            answer = self.path("answer.json")
            self.stages.append(Stage("answer", ["run", str(bundles[0]), s.answer.question, "--json"], [bundles[0]],
                                     answer, {"question": s.answer.question}, _json_metric("", _answer_metric),
                                     [f"bundle:{names[0]}"], stdout_to=answer))
        if bundles and baseline is not None and s.eval.enabled and (s.eval.qa or s.qa.enabled
                                                                    or _explicitly_enabled(s.eval)):
            self._eval(bundles[0], baseline, qa_dir, names[0])
        if bundles and s.bench.enabled:
            benched = _benched_bundles(s.bench.bundles, names, bundles)
            results = self.path("bench/results.jsonl")
            emulate = [a for p in s.bench.emulate for a in ("--emulate", p)]
            opts = {k: v for k, v in s.bench.cli_options().items()}
            # Quality next to speed: held-out perplexity and answers to the held-out FAQ questions,
            # each when the stage that writes it runs.
            quality = {stage: (flag, path) for stage, flag, path in [
                ("prepare", "--heldout", data / "heldout.jsonl"), ("qa", "--qa", qa_dir / "qa.heldout.jsonl")]
                if getattr(s, stage).enabled}
            quality_args = [a for flag, path in quality.values() for a in (flag, str(path))]
            self.stages.append(Stage("bench", ["bench", "run", *map(str, benched.values()), *emulate, "--out",
                                               str(results), *quality_args, *options_to_argv("bench", opts)],
                                     [*benched.values(), *(path for _, path in quality.values())], results,
                                     opts, _bench_metric, [f"bundle:{p}" for p in benched] + list(quality)))
            report = self.path("bench/report")
            self.stages.append(Stage("report", ["bench", "report", str(results), "--out", str(report)], [results],
                                     report, {}, lambda out: str(out / "report.md"), ["bench"]))
        return self.stages

    def _baseline(self, base: Path, profiles: dict[str, str], heldout_args: list[str], docs: list[Path]) -> Path | None:
        """Export and bundle the untuned base model like the first profile's bundle; None when nothing needs it."""
        s = self.recipe.stages
        if not (profiles and s.bundle.enabled and (s.rag.enabled or s.eval.enabled)):
            return None
        exp, bundle = self.path("export/base-model"), self.path("bundles/base-model")  # eval names it base-model
        prepared = ["prepare"] if heldout_args else []
        self.add("export:baseline", ["export", "--model", str(base), "--profile", next(iter(profiles.values())),
                                     "--out", str(exp), *heldout_args], [base, *([self.path("data")] if prepared else [])],
                 exp, s.export, ["base", *prepared], _json_metric("export.json", _export_metric))
        self.add("bundle:baseline", ["bundle", "--export", str(exp), *[a for d in docs for a in ("--docs", str(d))],
                                     "--out", str(bundle)], [exp, *docs], bundle, s.bundle, ["export:baseline"],
                 _json_metric("manifest.json", _bundle_metric))
        return bundle

    def _rag(self, baseline: Path, qa_dir: Path, seed: list[str]) -> tuple[Path, str]:
        """SFT examples in the baseline bundle's own prompt, and the held-out questions its retriever can find."""
        s = self.recipe.stages
        out = self.path("rag/sft.jsonl")
        # one token budget: the examples are cut to what SFT trains on
        seq_len = s.rag.cli_options().get("seq_len") or s.sft.cli_options().get("seq_len")
        wired = ["--seq-len", str(seq_len)] if seq_len and "seq_len" not in s.rag.cli_options() else []
        self.add("rag", ["data", "rag", "--bundle", str(baseline), "--qa", str(qa_dir / "qa.jsonl"),
                         "--heldout", str(qa_dir / "qa.heldout.jsonl"), "--heldout-out", str(self.path("rag/heldout.jsonl")),
                         "--out", str(out), *seed, *wired], [baseline, qa_dir / "qa.jsonl", qa_dir / "qa.heldout.jsonl"],
                 out, s.rag, ["bundle:baseline", "qa"], _json_metric("sft.slmforge.json", _rag_metric))
        return out, "rag"

    def _eval(self, bundle: Path, baseline: Path, qa_dir: Path, first: str) -> None:
        """The adapted bundle against the base model's, on held-out questions (the user's own when given)."""
        s = self.recipe.stages
        if s.eval.qa:
            questions, after = (self.base_dir / s.eval.qa).resolve(), []
            if not questions.is_file():
                raise UserError(f"recipe: stages.eval.qa: {questions} not found")
        elif s.rag.enabled and s.qa.enabled:
            questions, after = self.path("rag/heldout.jsonl"), ["rag"]
        elif s.qa.enabled:
            questions, after = qa_dir / "qa.heldout.jsonl", ["qa"]
        else:
            raise UserError("recipe: stages.eval needs held-out questions: set stages.eval.qa to your own JSONL, "
                            "enable stages.qa, or set stages.eval.enabled: false")
        out = self.path("eval")
        self.add("eval", ["eval", str(bundle), "--baseline", str(baseline), "--qa", str(questions), "--out", str(out)],
                 [bundle, baseline, questions], out, s.eval, [f"bundle:{first}", "bundle:baseline", *after],
                 _json_metric("eval.json", _eval_metric))

    def _write_merge_config(self, path: Path, cpt: Path, tuned: Path) -> None:
        """The merge of domain knowledge (CPT) and behaviour (SFT/aligned), as a mergekit-style YAML."""
        m = self.recipe.stages.merge
        models: list[dict[str, Any]] = [{"model": str(cpt)}, {"model": str(tuned)}]
        if m.weights:
            for entry, weight in zip(models, m.weights):
                entry["parameters"] = {"weight": weight}
        config = {"merge_method": m.merge_method, "base_model": str(cpt), "models": models,
                  "parameters": m.parameters, "dtype": "float32", "tokenizer_source": str(tuned)}
        if self.dry_run and not path.exists():  # a plan writes nothing; with no run yet, merge would run anyway
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config, sort_keys=False)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
