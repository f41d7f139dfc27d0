"""`slmforge serve BUNDLE`: the bundle behind an OpenAI-compatible HTTP API and a chat page on this machine."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click
from slmforge.runtime.serve.api import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_QUEUE,
)
from slmforge.runtime.telemetry.store import DEFAULT_MAX_DAYS, DEFAULT_MAX_ROWS


def model_name(source: Path) -> str:
    """The id clients pass as ``model``: the bundle's name."""
    return source.name.removesuffix(".tar")


def page_url(host: str, port: int) -> str:
    """The chat page's address to print: a wildcard bind is opened on this machine as localhost."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback exposes the model to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", envvar="SLMFORGE_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on /v1/* (or set SLMFORGE_API_KEY).")
@click.option("--log-text", is_flag=True, help="Also store question and answer text in telemetry (off by default).")
@click.option("--escalate-url", default=None,
              help="OpenAI-compatible base URL of a larger model for questions the bundle cannot handle.")
@click.option("--escalate-key", envvar="SLMFORGE_ESCALATE_KEY", default=None, help="Bearer key for --escalate-url.")
@click.option("--escalate-model", default=None, help="'model' to ask the escalation endpoint for.")
@click.option("--queue", type=click.IntRange(0, 1024), default=DEFAULT_QUEUE, show_default=True,
              help="Requests that may wait behind the ones generating; more are refused with 429.")
@click.option("--parallel", type=click.IntRange(1, 64), default=None,
              help="Answers generated at once, decoded together in one llama.cpp batch (default: the bundle's "
                   "device profile, 4 on the host); each holds its own KV cache of --n-ctx tokens.")
@click.option("--max-tokens-limit", type=click.IntRange(1), default=DEFAULT_MAX_TOKENS_LIMIT, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(1024), default=DEFAULT_MAX_BODY_BYTES, show_default=True)
@click.option("--body-timeout", type=click.FloatRange(0.1), default=DEFAULT_BODY_TIMEOUT_S, show_default=True,
              help="Seconds a client has to send a request body; slower ones get 408 and are disconnected.")
@click.option("--no-cache", is_flag=True, help="Do not answer repeated questions from the answer cache.")
@click.option("--cache-similarity", type=click.FloatRange(0.5, 1.0), default=0.92, show_default=True,
              help="Cosine above which a differently worded question counts as a repeat.")
@click.option("--telemetry", "telemetry_file", type=click.Path(path_type=Path), default=None,
              help="Telemetry database (default: <bundle>.telemetry.db next to the bundle).")
@click.option("--retention-rows", type=click.IntRange(100), default=DEFAULT_MAX_ROWS, show_default=True)
@click.option("--retention-days", type=click.FloatRange(0.01), default=DEFAULT_MAX_DAYS, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: the device's cores).")
@click.option("--n-ctx", type=click.IntRange(128), default=None, help="Context window (default: the bundle's).")
@click.option("--k", type=click.IntRange(0, 32), default=4, show_default=True, help="Passages retrieved per question.")
def serve(bundle: Path, host: str, port: int, api_key: str | None, log_text: bool, escalate_url: str | None,
          escalate_key: str | None, escalate_model: str | None, queue: int, parallel: int | None, max_tokens_limit: int,
          max_body_bytes: int, body_timeout: float, no_cache: bool, cache_similarity: float, telemetry_file: Path | None,
          retention_rows: int, retention_days: float, threads: int | None, n_ctx: int | None, k: int) -> None:
    """Serve BUNDLE over an OpenAI-compatible API (chat, streaming, embeddings) with cited answers,
    and a chat page with sources and a status page in the browser (the printed URL)."""
    from slmforge.runtime.answer.cache import AnswerCache
    from slmforge.runtime.answer.engine import Engine
    from slmforge.runtime.answer.escalate import Escalator
    from slmforge.runtime.answer.service import AnswerService
    from slmforge.runtime.bundle.reader import open_bundle
    from slmforge.runtime.generate.batched import batched, profile_parallel
    from slmforge.runtime.serve.api import ServerConfig, create_app, run_server
    from slmforge.runtime.serve.page import add_page_routes
    from slmforge.runtime.telemetry.store import TelemetryStore, telemetry_path

    opened = open_bundle(bundle)
    engine = Engine(opened, threads=threads, n_ctx=n_ctx)
    engine.backend, parallel = batched(engine.backend, parallel or profile_parallel(opened.manifest.profile),
                                       explicit=parallel is not None)
    db = telemetry_file or telemetry_path(opened.source)
    store = TelemetryStore(db, log_text=log_text, max_rows=retention_rows, max_days=retention_days)
    service = AnswerService(
        engine, store, model_name=model_name(opened.source),
        cache=None if no_cache else AnswerCache(similarity=cache_similarity),
        escalator=Escalator(escalate_url, api_key=escalate_key, model=escalate_model) if escalate_url else None,
        default_k=k,
    )
    config = ServerConfig(api_key=api_key, max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit,
                          queue=queue, body_timeout_s=body_timeout, parallel=parallel)
    if not _is_loopback(host) and not api_key:
        click.echo(f"warning: serving on {host} without --api-key; anyone on the network can use this model",
                   err=True)
    app = create_app(service, config)
    add_page_routes(app, service, api_key)
    click.echo(f"serving {opened.source} as '{service.model_name}' on http://{host}:{port}/v1 "
               f"({service.backend_name}, {parallel} at a time, queue {queue}, telemetry {db}{', text logged' if log_text else ''})",
               err=True)
    click.echo(f"open the page: {page_url(host, port)}  (status: {page_url(host, port)}status)", err=True)
    run_server(app, host=host, port=port)
