"""The `slmforge` command: a thin click group whose verbs load lazily.

Each verb lives in its own module (mlx-lm style) under the folder that owns it;
loading is lazy so `slmforge --help` is instant and the on-device commands never
import torch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from slmforge import __version__
from slmforge.errors import UserError

# name -> ("module:attribute", one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("slmforge.commands.demo:demo", "Run the shipped recipe end to end on the embedded defaults."),
    "pipeline": ("slmforge.commands.pipeline:pipeline", "Run every stage of a recipe, skipping what is up to date."),
    "base": ("slmforge.trainer.base.cli:base", "Import a base model (embedded SmolLM2-135M, a GGUF or an HF folder)."),
    "profiles": ("slmforge.commands.profiles:profiles", "List and show device profiles."),
    "data": ("slmforge.trainer.data.cli:data", "Prepare documents; build SFT and preference data."),
    "train": ("slmforge.trainer.train.cli:train", "Continual pretraining, SFT, preference alignment."),
    "merge": ("slmforge.trainer.merge.cli:merge", "Merge checkpoints from a mergekit-style YAML."),
    "compress": ("slmforge.trainer.shrink.cli_compress:compress", "Depth-prune a model by measured block importance."),
    "distill": ("slmforge.trainer.shrink.cli_distill:distill", "Distill a teacher into a (pruned) student."),
    "export": ("slmforge.export.cli:export", "Compile a checkpoint to GGUF/ONNX that fits a device profile."),
    "bundle": ("slmforge.runtime.bundle.cli:bundle", "Package model, embedder and RAG index for a device."),
    "index": ("slmforge.runtime.index.cli:index", "Add, remove and inspect documents in a bundle's index."),
    "run": ("slmforge.runtime.answer.cli:run", "Answer one question from a bundle, with citations."),
    "chat": ("slmforge.runtime.answer.cli:chat", "Multi-turn chat with a bundle."),
    "serve": ("slmforge.runtime.serve.cli:serve", "Serve a bundle over an OpenAI-compatible HTTP API."),
    "telemetry": ("slmforge.runtime.telemetry.cli:telemetry", "Report latency, memory and drift from telemetry."),
    "feedback": ("slmforge.runtime.telemetry.cli_feedback:feedback", "Export user feedback as training data."),
    "bench": ("slmforge.bench.cli:bench", "Benchmark bundles across device profiles; build reports."),
    "eval": ("slmforge.bench.cli_eval:eval_cmd", "Compare bundles with a baseline on held-out questions (RAG, citations)."),
}
# Sub-verbs that live with the code they drive rather than with their group (the layering keeps
# trainer/ free of runtime imports, yet `data rag` reads best next to `data qa`).
SUBCOMMANDS: dict[str, dict[str, str]] = {
    "data": {"rag": "slmforge.runtime.answer.cli_rag:rag"},
    "train": {"retriever": "slmforge.export.cli_retriever:retriever"},  # needs the runtime's chunker and torch
}


def _load(target: str) -> click.Command:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


class LazyGroup(click.Group):
    """A group that imports a verb's module only when that verb runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        try:
            command = _load(target)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("torch", "transformers", "peft", "trl", "gguf", "datasketch"):
                raise UserError(
                    f"'slmforge {cmd_name}' needs the training extras ({exc.name} is missing); "
                    "install them with: pip install torch==2.13.0 && pip install 'slmforge[train]'"
                ) from None
            raise
        if isinstance(command, click.Group):
            for name, sub in SUBCOMMANDS.get(cmd_name, {}).items():
                if name not in command.commands:
                    command.add_command(_load(sub), name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slmforge")
def cli() -> None:
    """slmforge: adapt a small language model to your documents, compile it for a device,
    and run it offline with cited answers."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="slmforge", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # last line of defence: one line, not a traceback
        if os.environ.get("SLMFORGE_DEBUG"):
            raise
        click.echo(
            f"internal error: {exc.__class__.__name__}: {exc} (re-run with SLMFORGE_DEBUG=1 for a traceback "
            "and please report it)",
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
