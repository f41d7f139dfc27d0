"""`slmforge profiles list|show`."""

from __future__ import annotations

import click
import yaml

from slmforge.output import emit_json, format_table, json_option
from slmforge.profiles import list_profiles, load_profile


@click.group()
def profiles() -> None:
    """Device profiles: what each target device can hold and how fast it reads memory."""


@profiles.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List shipped profiles and the detected host."""
    items = list_profiles()
    if as_json:
        emit_json([p.model_dump(mode="json") for p in items])
        return
    rows = [
        (p.name, p.ram_gb, p.app_memory_gb, f"{p.cpu.cores}c {'/'.join(p.cpu.isa[:3])}", p.memory_bandwidth_gbs,
         ",".join(p.formats), p.max_context, p.target_decode_tok_s)
        for p in items
    ]
    click.echo(format_table(("name", "RAM GB", "app GB", "cpu", "BW GB/s", "formats", "ctx", "target tok/s"), rows))


@profiles.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str, as_json: bool) -> None:
    """Show one profile (a shipped name, 'host', or a YAML path)."""
    profile = load_profile(name)
    if as_json:
        emit_json(profile.model_dump(mode="json"))
    else:
        click.echo(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False).rstrip())
