"""The pipeline as a table: one spec per stage, in the order the stages run.

A spec names the stage, the verb that runs it (written only here), the recipe section whose
options that verb receives, the rule that says whether it runs for a recipe, the wiring of its
arguments, inputs, output and the stages it depends on, where its one-line summary is, and what
later stages take from it. The baseline is the untuned base model exported for the first profile
and bundled with the documents: ``rag`` renders SFT examples through its retriever and prompt,
the adapted bundles reuse its index, and ``eval`` judges the first adapted bundle against it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from slmforge.errors import UserError
from slmforge.fileio import sibling
from slmforge.recipe import AnswerOptions, StageOptions
from slmforge.stage_summary import (
    SummaryReader,
    manifest_summary,
    output_path,
    verb_summary,
)

if TYPE_CHECKING:
    from slmforge.pipeline_plan import PlanBuilder


@dataclass(frozen=True)
class Made:
    """An output later stages take (a checkpoint, SFT data, a bundle) and the stage that makes it."""

    path: Path
    stage: str


@dataclass
class Wiring:
    """One stage's paths in one plan, from its spec's wiring function."""

    args: list[str]  # after the verb, before the recipe's own options
    inputs: list[Path]
    output: Path
    depends_on: list[str]
    settings: dict[str, Any] = field(default_factory=dict)  # recipe settings that are no CLI option (fingerprinted)
    writes: dict[Path, str] = field(default_factory=dict)  # files the runner writes when the stage runs
    stdout_to: Path | None = None


@dataclass(frozen=True)
class StageSpec:
    """One row of the plan."""

    name: str
    verb: tuple[str, ...]
    section: str | None  # stages.<section>: the recipe options the verb receives
    runs: Callable[[PlanBuilder], bool]  # the when-enabled rule (check_enabled refuses what cannot be honoured)
    wire: Callable[[PlanBuilder, str | None], Wiring]  # given the builder and, per profile, the profile's name
    summary: SummaryReader | None = None
    makes: str | None = None  # what later stages take from it: "model", "sft data", "baseline", "bundle"


@dataclass(frozen=True)
class PerProfile:
    """Specs planned together once per export profile (export:a, bundle:a, export:b, bundle:b, …)."""

    specs: tuple[StageSpec, ...]


def explicitly_enabled(options: StageOptions | AnswerOptions) -> bool:
    return options.enabled and "enabled" in options.model_fields_set


# -- wiring: shared pieces -------------------------------------------------------------------------

def _seed(b: PlanBuilder) -> list[str]:
    return ["--seed", str(b.recipe.seed)]


def _data(b: PlanBuilder) -> Path:
    return b.path("data")


def _qa_file(b: PlanBuilder) -> Path:
    return b.path("qa") / "qa.jsonl"


def _heldout_text(b: PlanBuilder) -> list[str]:
    """``--heldout`` for export/bench when prepare writes held-out text (they can do without)."""
    return ["--heldout", str(_data(b) / "heldout.jsonl")] if b.recipe.stages.prepare.enabled else []


def _gate_text(b: PlanBuilder) -> list[str]:
    """Export's ``--heldout``: the held-out split, then the recipe's documents, so the gate gets its
    ``eval_tokens`` even when the split is small (export/run.py ``heldout_texts``)."""
    return [*_heldout_text(b), *(a for d in b.docs for a in ("--heldout", str(d)))]


def _prepared(b: PlanBuilder) -> list[str]:
    return ["prepare"] if b.recipe.stages.prepare.enabled else []


def _docs_args(b: PlanBuilder) -> list[str]:
    return [a for d in b.docs for a in ("--docs", str(d))]


def _model(b: PlanBuilder) -> Made:
    return b.last("model")  # type: ignore[return-value]  # base always runs first


def _baseline_needed(b: PlanBuilder) -> bool:
    s = b.recipe.stages
    return bool(b.profiles) and s.bundle.enabled and (s.rag.enabled or s.eval.enabled)


# -- wiring: one function per stage ----------------------------------------------------------------

def _base(b: PlanBuilder, _: str | None) -> Wiring:
    if b.recipe.base_model == "embedded":
        from slmforge.embedded import embedded_gguf

        source_args, source_inputs = [], [embedded_gguf()]
    else:
        src = (b.base_dir / Path(b.recipe.base_model).expanduser()).resolve()
        if not src.exists():
            raise UserError(f"recipe: base_model: {src} not found (a .gguf file or an HF model folder; "
                            "for the Gemma recipe run 'make gemma-model' first)")
        source_args, source_inputs = [str(src)], [src]
    out = b.path("base")
    return Wiring([*source_args, "--out", str(out)], source_inputs, out, [])


def _prepare(b: PlanBuilder, _: str | None) -> Wiring:
    return Wiring([*map(str, b.docs), "--out", str(_data(b)), *_seed(b)], b.docs, _data(b), [])


def _qa(b: PlanBuilder, _: str | None) -> Wiring:
    inputs = b.docs + [(b.base_dir / q).resolve() for q in b.recipe.qa]
    return Wiring([*map(str, inputs), "--out", str(_qa_file(b)), *_seed(b)], inputs, _qa_file(b), [])


def _retriever(b: PlanBuilder, _: str | None) -> Wiring:
    """The embedder tuned on the qa stage's pairs; the documents of its held-out questions stay out of training."""
    qa, heldout, out = _qa_file(b), sibling(_qa_file(b), ".heldout.jsonl"), b.path("retriever")
    return Wiring(["--data", str(qa), "--heldout", str(heldout), *_docs_args(b), "--out", str(out), *_seed(b)],
                  [qa, heldout, *b.docs], out, ["qa"])


def _embedder_source(b: PlanBuilder) -> tuple[list[str], list[Path], list[str]]:
    """(args, inputs, depends_on) that make an export carry the tuned embedder, when the retriever stage runs.

    Every export takes it, the baseline's too: eval compares models over the same index."""
    tuned = b.last("retriever")
    if tuned is None:
        return [], [], []
    return ["--embedder-source", str(tuned.path)], [tuned.path], [tuned.stage]


def _baseline_export(b: PlanBuilder, _: str | None) -> Wiring:
    base, out = b.made["model"][0], b.path("export/base-model")  # eval names it base-model
    args, inputs, after = _embedder_source(b)
    return Wiring(["--model", str(base.path), "--profile", next(iter(b.profiles.values())), "--out", str(out),
                   *_gate_text(b), *args], [base.path, *([_data(b)] if _prepared(b) else []), *b.docs, *inputs], out,
                  [base.stage, *_prepared(b), *after])


def _baseline_bundle(b: PlanBuilder, _: str | None) -> Wiring:
    export, out = b.output_of("export:baseline"), b.path("bundles/base-model")
    return Wiring(["--export", str(export), *_docs_args(b), "--out", str(out)], [export, *b.docs], out,
                  ["export:baseline"])


def _rag_runs(b: PlanBuilder) -> bool:
    s = b.recipe.stages
    return b.last("baseline") is not None and s.rag.enabled and s.qa.enabled


def _rag(b: PlanBuilder, _: str | None) -> Wiring:
    """SFT examples in the baseline bundle's own prompt, and the held-out questions its retriever can find."""
    s, baseline, out = b.recipe.stages, b.last("baseline"), b.path("rag/sft.jsonl")
    assert baseline is not None
    # one token budget: the examples are cut to what SFT trains on
    seq_len = s.rag.cli_options().get("seq_len") or s.sft.cli_options().get("seq_len")
    wired = ["--seq-len", str(seq_len)] if seq_len and "seq_len" not in s.rag.cli_options() else []
    heldout = sibling(_qa_file(b), ".heldout.jsonl")
    return Wiring(["--bundle", str(baseline.path), "--qa", str(_qa_file(b)), "--heldout", str(heldout),
                   "--heldout-out", str(b.path("rag/heldout.jsonl")), "--out", str(out), *_seed(b), *wired],
                  [baseline.path, _qa_file(b), heldout], out, [baseline.stage, "qa"])


def _pretrain(b: PlanBuilder, _: str | None) -> Wiring:
    model, out = _model(b), b.path("cpt")
    return Wiring(["--model", str(model.path), "--data", str(_data(b)), "--out", str(out), *_seed(b)],
                  [model.path, _data(b)], out, [model.stage, "prepare"])


def _sft(b: PlanBuilder, _: str | None) -> Wiring:
    model, data, out = _model(b), b.last("sft data"), b.path("sft")
    assert data is not None
    heldout = _data(b) / "heldout.jsonl"
    return Wiring(["--model", str(model.path), "--data", str(data.path), "--out", str(out),
                   "--heldout-text", str(heldout), *_seed(b)], [model.path, data.path, heldout], out,
                  [model.stage, data.stage, "prepare"])


def _prefs(b: PlanBuilder, name: str) -> Path:
    return b.path("prefs") / name


def _pairs(b: PlanBuilder, _: str | None) -> Wiring:
    model, out = _model(b), _prefs(b, "prefs.jsonl")
    return Wiring(["--qa", str(_qa_file(b)), "--model", str(model.path), "--out", str(out),
                   "--kto-out", str(_prefs(b, "kto.jsonl")), *_seed(b)], [model.path, _qa_file(b)], out,
                  [model.stage, "qa"])


def _align(b: PlanBuilder, _: str | None) -> Wiring:
    model, out = _model(b), b.path("align")
    method = str(b.recipe.stages.align.cli_options().get("method", "dpo"))
    prefs = _prefs(b, "kto.jsonl" if method == "kto" else "prefs.jsonl")
    return Wiring(["--model", str(model.path), "--data", str(prefs), "--out", str(out), *_seed(b)],
                  [model.path, prefs], out, [model.stage, "pairs"])


def _merge_runs(b: PlanBuilder) -> bool:
    """Merge domain knowledge (CPT) back into behaviour (SFT/aligned): only when both exist."""
    return b.recipe.stages.merge.enabled and b.planned("pretrain") and _model(b).stage != "pretrain"


def _merge(b: PlanBuilder, _: str | None) -> Wiring:
    """The merge as a mergekit-style YAML, written by the runner when merge runs (its text is fingerprinted)."""
    m, cpt, tuned = b.recipe.stages.merge, b.output_of("pretrain"), _model(b)
    models: list[dict[str, Any]] = [{"model": str(cpt)}, {"model": str(tuned.path)}]
    if m.weights:
        for entry, weight in zip(models, m.weights):
            entry["parameters"] = {"weight": weight}
    config = {"merge_method": m.merge_method, "base_model": str(cpt), "models": models,
              "parameters": m.parameters, "dtype": "float32", "tokenizer_source": str(tuned.path)}
    path, out = b.path("merge.yaml"), b.path("merged")
    return Wiring([str(path), "--out", str(out)], [cpt, tuned.path], out, ["pretrain", tuned.stage],
                  settings={"merge_config": config}, writes={path: yaml.safe_dump(config, sort_keys=False)})


def _compress(b: PlanBuilder, _: str | None) -> Wiring:
    model, out = _model(b), b.path("pruned")
    return Wiring(["--model", str(model.path), "--data", str(_data(b)), "--out", str(out)], [model.path, _data(b)],
                  out, [model.stage, "prepare"])


def _distill(b: PlanBuilder, _: str | None) -> Wiring:
    teacher, student = b.made["model"][-2:]  # the model compress pruned, and the pruned one
    out = b.path("distilled")
    return Wiring(["--teacher", str(teacher.path), "--student", str(student.path), "--data", str(_data(b)),
                   "--out", str(out)], [teacher.path, student.path, _data(b)], out, ["compress", "prepare"])


def _export(b: PlanBuilder, profile: str | None) -> Wiring:
    assert profile is not None
    model, out, first = _model(b), b.path(f"export/{profile}"), next(iter(b.profiles))
    # Later profiles link what the first export built and measured when they pick the same quant.
    reuse = ["--reuse", str(b.path(f"export/{first}"))] if profile != first else []
    args, inputs, after = _embedder_source(b)
    return Wiring(["--model", str(model.path), "--profile", b.profiles[profile], "--out", str(out), *_gate_text(b),
                   *reuse, *args], [model.path, *([_data(b)] if _prepared(b) else []), *b.docs, *inputs], out,
                  [model.stage, *_prepared(b), *([f"export:{first}"] if reuse else []), *after])


def _bundle(b: PlanBuilder, profile: str | None) -> Wiring:
    export, out = b.output_of(f"export:{profile}"), b.path(f"bundles/{profile}")
    # Bundles start from the baseline's (or the first one's) index: same documents, same embedder.
    index_from = b.last("baseline") or (b.made["bundle"][0] if b.made.get("bundle") else None)
    reuse = ["--index-from", str(index_from.path)] if index_from else []
    return Wiring(["--export", str(export), *_docs_args(b), "--out", str(out), *reuse],
                  [export, *b.docs, *([index_from.path] if index_from else [])], out,
                  [f"export:{profile}", *([index_from.stage] if index_from else [])])


def _answer(b: PlanBuilder, _: str | None) -> Wiring:
    bundle, out, question = b.made["bundle"][0], b.path("answer.json"), b.recipe.stages.answer.question
    return Wiring([str(bundle.path), question, "--json"], [bundle.path], out, [bundle.stage],
                  settings={"question": question}, stdout_to=out)


def _eval_runs(b: PlanBuilder) -> bool:
    s = b.recipe.stages
    return (bool(b.made.get("bundle")) and b.last("baseline") is not None and s.eval.enabled
            and bool(s.eval.qa or s.qa.enabled or explicitly_enabled(s.eval)))


def _eval(b: PlanBuilder, _: str | None) -> Wiring:
    """The adapted bundle against the base model's, on held-out questions (the user's own when given)."""
    s, bundle, baseline = b.recipe.stages, b.made["bundle"][0], b.last("baseline")
    assert baseline is not None
    if s.eval.qa:
        questions, after = (b.base_dir / s.eval.qa).resolve(), []
        if not questions.is_file():
            raise UserError(f"recipe: stages.eval.qa: {questions} not found")
    elif s.rag.enabled and s.qa.enabled:
        questions, after = b.path("rag/heldout.jsonl"), ["rag"]
    elif s.qa.enabled:
        questions, after = sibling(_qa_file(b), ".heldout.jsonl"), ["qa"]
    else:
        raise UserError("recipe: stages.eval needs held-out questions: set stages.eval.qa to your own JSONL, "
                        "enable stages.qa, or set stages.eval.enabled: false")
    out = b.path("eval")
    return Wiring([str(bundle.path), "--baseline", str(baseline.path), "--qa", str(questions), "--out", str(out)],
                  [bundle.path, baseline.path, questions], out, [bundle.stage, baseline.stage, *after])


def _benched_bundles(chosen: list[str] | None, profiles: list[str], bundles: list[Path]) -> dict[str, Path]:
    """Profile → bundle dir of the bundles the bench stage times (all of them unless the recipe names some)."""
    by_profile = dict(zip(profiles, bundles))
    for name in chosen or []:
        if name not in by_profile:
            raise UserError(f"recipe: stages.bench.bundles: '{name}' is not one of stages.export.profiles "
                            f"({', '.join(profiles)})")
    return {name: by_profile[name] for name in chosen} if chosen else by_profile


def _bench(b: PlanBuilder, _: str | None) -> Wiring:
    s = b.recipe.stages
    benched = _benched_bundles(s.bench.bundles, list(b.profiles), [m.path for m in b.made["bundle"]])
    out = b.path("bench/results.jsonl")
    emulate = [a for p in s.bench.emulate for a in ("--emulate", p)]
    # Quality next to speed: held-out perplexity and answers to the held-out FAQ questions,
    # each when the stage that writes it runs.
    quality = {stage: (flag, path) for stage, flag, path in [
        ("prepare", "--heldout", _data(b) / "heldout.jsonl"), ("qa", "--qa", sibling(_qa_file(b), ".heldout.jsonl"))]
        if getattr(s, stage).enabled}
    quality_args = [a for flag, path in quality.values() for a in (flag, str(path))]
    return Wiring([*map(str, benched.values()), *emulate, "--out", str(out), *quality_args],
                  [*benched.values(), *(path for _, path in quality.values())], out,
                  [f"bundle:{p}" for p in benched] + list(quality))


def _report(b: PlanBuilder, _: str | None) -> Wiring:
    results, out = b.output_of("bench"), b.path("bench/report")
    return Wiring([str(results), "--out", str(out)], [results], out, ["bench"])


def _always(b: PlanBuilder) -> bool:
    return True


def _on(section: str) -> Callable[[PlanBuilder], bool]:
    return lambda b: getattr(b.recipe.stages, section).enabled


def _with_bundles(section: str) -> Callable[[PlanBuilder], bool]:
    return lambda b: bool(b.made.get("bundle")) and getattr(b.recipe.stages, section).enabled


# where each verb's one-line summary is: its slmforge.json (or <stem>.slmforge.json beside a file), export.json,
# the bundle's manifest.json, eval.json
SUMMARY, EXPORT_SUMMARY, BUNDLE_SUMMARY = manifest_summary(), manifest_summary("export.json"), manifest_summary("manifest.json")

PLAN: tuple[StageSpec | PerProfile, ...] = (
    StageSpec("base", ("base", "import"), None, _always, _base, SUMMARY, makes="model"),
    StageSpec("prepare", ("data", "prepare"), "prepare", _on("prepare"), _prepare, SUMMARY),
    StageSpec("qa", ("data", "qa"), "qa", _on("qa"), _qa, SUMMARY, makes="sft data"),
    StageSpec("retriever", ("train", "retriever"), "retriever", _on("retriever"), _retriever, SUMMARY,
              makes="retriever"),
    StageSpec("export:baseline", ("export",), "export", _baseline_needed, _baseline_export, EXPORT_SUMMARY),
    StageSpec("bundle:baseline", ("bundle",), "bundle", _baseline_needed, _baseline_bundle,
              BUNDLE_SUMMARY, makes="baseline"),
    StageSpec("rag", ("data", "rag"), "rag", _rag_runs, _rag, SUMMARY, makes="sft data"),
    StageSpec("pretrain", ("train", "pretrain"), "pretrain", _on("pretrain"), _pretrain,
              SUMMARY, makes="model"),
    StageSpec("sft", ("train", "sft"), "sft", _on("sft"), _sft, SUMMARY, makes="model"),
    # pairs exist for align; check_enabled refuses align without them
    StageSpec("pairs", ("data", "pairs"), "pairs", _on("align"), _pairs, SUMMARY),
    StageSpec("align", ("train", "align"), "align", _on("align"), _align, SUMMARY,
              makes="model"),
    StageSpec("merge", ("merge",), "merge", _merge_runs, _merge, SUMMARY, makes="model"),
    StageSpec("compress", ("compress",), "compress", _on("compress"), _compress, SUMMARY, makes="model"),
    StageSpec("distill", ("distill",), "distill", _on("distill"), _distill, SUMMARY, makes="model"),
    PerProfile((
        StageSpec("export", ("export",), "export", _always, _export, EXPORT_SUMMARY),
        StageSpec("bundle", ("bundle",), "bundle", _on("bundle"), _bundle, BUNDLE_SUMMARY, makes="bundle"),
    )),
    StageSpec("answer", ("run",), "answer", _with_bundles("answer"), _answer,
              verb_summary("slmforge.runtime.answer.cli:answer_line")),
    StageSpec("eval", ("eval",), "eval", _eval_runs, _eval, manifest_summary("eval.json")),
    StageSpec("bench", ("bench", "run"), "bench", _with_bundles("bench"), _bench,
              verb_summary("slmforge.bench.records:results_line")),
    StageSpec("report", ("bench", "report"), None, lambda b: b.planned("bench"), _report, output_path),
)
