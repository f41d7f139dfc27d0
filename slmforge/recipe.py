"""The pipeline recipe (`recipe.yaml`): one file for a user's whole job.

Unknown keys and wrong types are errors naming the key (extra="forbid").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slmforge.schema import load_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PrepareStage(_Strict):
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)
    min_chars: int = 200
    redact_pii: bool = True


class TrainStage(_Strict):
    enabled: bool = True
    method: Literal["lora", "full"] = "lora"
    max_steps: int | None = None
    epochs: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    lora_r: int | None = None


class AlignStage(TrainStage):
    method_name: Literal["dpo", "ipo", "kto", "orpo"] = Field(default="dpo", alias="algorithm")
    beta: float | None = None


class MergeStage(_Strict):
    enabled: bool = True
    config: dict[str, Any] | None = Field(default=None, description="a mergekit-style merge config")


class CompressStage(_Strict):
    enabled: bool = False
    keep_layers: int | None = None
    distill_steps: int | None = None


class ExportStage(_Strict):
    profiles: list[str] = Field(min_length=1)
    formats: list[Literal["gguf", "onnx"]] = Field(default_factory=lambda: ["gguf"])
    quant: str | None = None


class BundleStage(_Strict):
    system_prompt: str | None = None
    sample_question: str | None = None


class BenchStage(_Strict):
    enabled: bool = True
    repeats: int = 3
    emulate: list[str] = Field(default_factory=list)


class Stages(_Strict):
    prepare: PrepareStage = Field(default_factory=PrepareStage)
    pretrain: TrainStage = Field(default_factory=TrainStage)
    sft: TrainStage = Field(default_factory=TrainStage)
    align: AlignStage = Field(default_factory=AlignStage)
    merge: MergeStage = Field(default_factory=MergeStage)
    compress: CompressStage = Field(default_factory=CompressStage)
    export: ExportStage
    bundle: BundleStage = Field(default_factory=BundleStage)
    bench: BenchStage = Field(default_factory=BenchStage)


class Recipe(_Strict):
    name: str
    base_model: str = Field(default="embedded", description="'embedded' (SmolLM2-135M), a GGUF path or an HF folder")
    documents: list[str] = Field(min_length=1, description="files or folders, relative to the recipe")
    qa: list[str] = Field(default_factory=list, description="extra SFT/QA JSONL files")
    preferences: list[str] = Field(default_factory=list, description="extra preference JSONL files")
    seed: int = 0
    output_dir: str = "runs/{name}"
    stages: Stages


def load_recipe(path: str | Path) -> Recipe:
    return load_model(Recipe, path)
