"""The page `slmforge serve` shows in a browser: a chat at ``/``, a status page at ``/status``.

Why here and not in api.py: the API stays one module with one job; this adds what a person
with a browser needs on top of it. The pages are plain HTML/CSS/JS shipped inside the package
(``runtime/serve/webui/``), so they work offline: no CDN, font or script from elsewhere, and a
Content-Security-Policy that forbids loading any. They talk to the same OpenAI-compatible
``/v1/chat/completions`` (streamed) and ``/v1/feedback`` as any client, plus two small reads:

- ``GET /v1/passages/{chunk_id}``: the text of a cited passage (document, section, text), so a
  citation opens what it cites;
- ``GET /v1/status``: model, profile, the telemetry report (runtime.telemetry.report, drift from
  runtime.telemetry.drift) and the latest answers' latency over time.

Both need the API key when the server has one; the pages ask for it and keep it in the tab's
``sessionStorage`` only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from slmforge.runtime.index.store import RagIndex
from slmforge.runtime.serve.api import check_key
from slmforge.runtime.serve.api_error import ApiError
from slmforge.runtime.telemetry.report import answer_series, build_report

if TYPE_CHECKING:
    from slmforge.runtime.answer.service import AnswerService

ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Everything the pages load comes from this server; inline scripts and other origins are refused.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_assets() -> dict[str, bytes]:
    """The page files shipped as package data (read once: the pages never change while serving)."""
    folder = resources.files("slmforge.runtime.serve").joinpath("webui")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}


class PassageReader:
    """Reads cited passages through its own read-only connection, so the model's thread never waits for it."""

    def __init__(self, rag_db: Any) -> None:
        self._index = RagIndex(rag_db, readonly=True)
        self._lock = threading.Lock()

    def get(self, chunk_id: int) -> dict[str, Any] | None:
        with self._lock:
            return self._index.passage(chunk_id)


def status_snapshot(service: AnswerService, last: int = 200) -> dict[str, Any]:
    """What the status page shows: the bundle, the telemetry report with its drift verdict, latency over time."""
    rows, feedback = service.store.requests(), service.store.feedback()
    manifest = service.engine.bundle.manifest
    report = build_report(rows, feedback, service.reference)
    return {
        "model": service.model_name, "backend": service.backend_name, "quant": service.quant,
        "profile": manifest.profile, "embedder": service.embedder_name, "chunks": service.reference.chunks,
        "report": report, "series": answer_series(rows, last=last), "generated": time.time(),
    }


def add_page_routes(app: FastAPI, service: AnswerService, api_key: str | None) -> None:
    """Mount the pages and their two reads on an app made by ``api.create_app``."""
    assets = load_assets()
    passages = PassageReader(service.engine.bundle.rag_db)

    def page(name: str) -> Response:
        return Response(assets[name], media_type=ASSETS[name], headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page("index.html")

    @app.get("/status", include_in_schema=False)
    async def status_page() -> Response:
        return page("index.html")  # one page, two views: the script shows the status view on this path

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in ASSETS or name.endswith(".html"):  # a fixed list: no path ever reaches the file system
            raise ApiError(404, f"no page file '{name}'", kind="not_found")
        return page(name)

    @app.get("/v1/passages/{chunk_id}")
    async def passage(request: Request, chunk_id: str) -> dict[str, Any]:
        check_key(request, api_key)
        if not chunk_id.isdigit() or len(chunk_id) > 18:
            raise ApiError(400, f"chunk id '{chunk_id[:40]}' is not a number; use a citation's 'chunk_id'",
                           param="chunk_id")
        found = await asyncio.get_running_loop().run_in_executor(None, passages.get, int(chunk_id))
        if found is None:
            raise ApiError(404, f"no passage {chunk_id} in this bundle's index (was it re-indexed?)",
                           kind="not_found", param="chunk_id")
        return {"object": "passage", **found}

    @app.get("/v1/status")
    async def status(request: Request) -> dict[str, Any]:
        check_key(request, api_key)
        return await asyncio.get_running_loop().run_in_executor(None, status_snapshot, service)

