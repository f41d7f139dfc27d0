"""`slmforge run` (one question) and `slmforge chat` (multi-turn), both with citations."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from slmforge.runtime.answer.engine import Engine
from slmforge.runtime.answer.types import Answer

from slmforge.output import emit_json, json_option
from slmforge.rag_prompt import passage_label

bundle_arg = click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
k_option = click.option("--k", "k", type=click.IntRange(min=0), default=4, show_default=True,
                        help="Chunks to retrieve.")
no_rag_option = click.option("--no-rag", is_flag=True, help="Answer from the model alone, without the index.")
max_tokens_option = click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                                 help="Longest answer in tokens (default: the bundle's).")
threads_option = click.option("--threads", type=click.IntRange(min=1), default=None,
                              help="CPU threads (default: host cores, capped by the bundle's profile).")
legacy_option = click.option("--legacy-runtime", is_flag=True,
                             help="Answer the way the runtime did before issue #18 (whole chunks, untuned llama.cpp): "
                                  "for comparisons; also SLMFORGE_LEGACY_RUNTIME=1.")


def _open_engine(bundle_path: Path, threads: int | None, legacy: bool = False, one_shot: bool = False) -> Engine:
    from slmforge.runtime.answer.engine import answer_path
    from slmforge.runtime.bundle.reader import open_bundle

    bundle = open_bundle(bundle_path)
    path = answer_path(legacy or None, profile_name=bundle.manifest.profile)
    return Engine(bundle, threads=threads, path=path, one_shot=one_shot)


def format_citations(answer: Answer) -> str:
    lines = []
    for i, c in enumerate(answer.citations, 1):
        lines.append(f"  [{i}] {passage_label(c['source'], c['heading'])}  (score {c['score']:.3f})")
    return "\n".join(lines)


def run_json(answer: Answer) -> dict:
    """The documented `run --json` shape (plus finish_reason and retrieval for scripts that want them)."""
    t = answer.timings
    return {
        "answer": answer.answer,
        "citations": answer.citations,
        "timings": {key: t.get(key) for key in ("embed_ms", "search_ms", "prefill_ms", "ttft_ms", "decode_tok_s")},
        "tokens": answer.tokens,
        "finish_reason": answer.finish_reason,
        "retrieval": answer.retrieval,
    }


@click.command("run")
@bundle_arg
@click.argument("question")
@json_option
@k_option
@no_rag_option
@max_tokens_option
@threads_option
@legacy_option
def run(bundle_path: Path, question: str, as_json: bool, k: int, no_rag: bool, max_tokens: int | None,
        threads: int | None, legacy_runtime: bool) -> None:
    """Answer one question from a bundle, with citations."""
    with _open_engine(bundle_path, threads, legacy_runtime, one_shot=not legacy_runtime) as engine:
        if as_json:
            emit_json(run_json(engine.answer(question, k=k, use_rag=not no_rag, max_tokens=max_tokens)))
            return
        stream = engine.answer_stream(question, k=k, use_rag=not no_rag, max_tokens=max_tokens)
        for delta in stream:
            click.echo(delta, nl=False)
        answer = stream.result
        click.echo()
        if answer.citations:
            click.echo("\nSources:")
            click.echo(format_citations(answer))


@click.command("chat")
@bundle_arg
@k_option
@no_rag_option
@max_tokens_option
@threads_option
@legacy_option
def chat(bundle_path: Path, k: int, no_rag: bool, max_tokens: int | None, threads: int | None,
         legacy_runtime: bool) -> None:
    """Multi-turn chat with a bundle (history trimmed to fit the context). Empty line or Ctrl-D ends.

    Type /good or /bad (optionally followed by a better answer) to rate the last answer."""
    history: list[dict] = []
    last: tuple[str, str] | None = None  # the exchange /good or /bad rates
    interactive = sys.stdin.isatty()
    with _open_engine(bundle_path, threads, legacy_runtime) as engine:
        if interactive:
            click.echo(f"chatting with {engine.bundle.manifest.model['path']} (context {engine.n_ctx} tokens); "
                       "empty line to quit", err=True)
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                break
            question = line.strip()
            if not question:
                break
            if question.split()[0] in ("/good", "/bad"):
                from slmforge.runtime.telemetry.feedback import rate_from_chat

                click.echo(rate_from_chat(engine.bundle.source, last, question), err=True)
                continue
            stream = engine.answer_stream(question, k=k, use_rag=not no_rag, history=history, max_tokens=max_tokens)
            for delta in stream:
                click.echo(delta, nl=False)
            answer = stream.result
            click.echo()
            if answer.citations:
                click.echo(format_citations(answer))
            if answer.dropped_turns:
                click.echo(f"(dropped the {answer.dropped_turns} oldest turns to fit the context)", err=True)
            history = _trim_to_kept(history, answer.dropped_turns)
            # history keeps the plain question, not the retrieved context, so old chunks don't crowd the window
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.answer}]
            last = (question, answer.answer)


def _trim_to_kept(history: list[dict], dropped_turns: int) -> list[dict]:
    """Forget the exchanges the context budget had to drop (they would be dropped again every turn)."""
    return history[2 * dropped_turns:]


def answer_line(path: Path) -> str:
    """One line for the pipeline table from a saved `run --json` answer: its citations and how it begins."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    text = " ".join(str(saved.get("answer", "")).split())
    return f"{len(saved.get('citations', []))} citations: {text[:60]}"
