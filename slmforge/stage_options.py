"""Recipe stage options → the flags of the verb that runs the stage, as strictly as typing them.

A recipe section (``stages.pretrain``) holds the CLI options of its verb spelled with underscores;
each is checked against the verb's own click options before anything runs, so a typo or a wrong
type in a recipe fails at planning time, not at stage N.
"""

from __future__ import annotations

import json
from typing import Any

import click

from slmforge.errors import UserError

# Options the pipeline sets itself (paths and wiring); a recipe may not override them.
WIRED = {"model", "data", "out", "docs", "export", "teacher", "student", "qa", "kto_out", "profile", "heldout",
         "json", "as_json", "resume", "emulate", "heldout_text", "reuse", "index_from", "bundle_path", "qa_file",
         "baseline", "heldout_out", "embedder_source"}


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


def options_to_argv(section: str, verb: tuple[str, ...], options: dict[str, Any]) -> list[str]:
    """Check the options of recipe section ``stages.<section>`` against ``verb``'s click options; render them as flags."""
    command = _command_for(verb)
    params = {p.name: p for p in command.params if isinstance(p, click.Option)}
    argv: list[str] = []
    for key, value in options.items():
        if key in WIRED:
            raise UserError(f"recipe: stages.{section}.{key}: set by the pipeline itself; remove it from the recipe")
        param = params.get(key)
        if param is None:
            known = ", ".join(sorted(k for k in params if k not in WIRED))
            raise UserError(f"recipe: stages.{section}.{key}: unknown option for 'slmforge {' '.join(verb)}'"
                            f" (known: {known})")
        values = value if isinstance(value, list) and param.multiple else [value]
        for raw in values:
            item = _yaml_value_for(param, raw, f"recipe: stages.{section}.{key}")
            try:
                param.type.convert(item, param, None)
            except click.BadParameter as exc:
                raise UserError(f"recipe: stages.{section}.{key}: {exc.message}") from None
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
