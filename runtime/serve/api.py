"""OpenAI-compatible HTTP API over one bundle: FastAPI app factory and uvicorn runner.

Routes: ``POST /v1/chat/completions`` (``stream: true`` → server-sent events in OpenAI's
chunk format ending with ``data: [DONE]``), ``POST /v1/embeddings``, ``GET /v1/models``,
``POST /v1/feedback``, ``GET /health``. Answers carry their sources in a ``citations``
field. Errors use OpenAI's ``{"error": {...}}`` shape so clients report them cleanly.
The model sits behind a bounded queue (``server_gate``) with ``parallel`` answers generating at once: overload is answered at once
with 429/503 and ``Retry-After``, never by waiting forever. Request bodies are untrusted
(``request_body``): every bad one is a 4xx, a body not sent within ``body_timeout_s`` is a
408, a client that leaves is a 499 in telemetry without a traceback. SIGTERM ends running
streams at once with a final chunk and ``data: [DONE]``, then uvicorn drains.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slmforge.runtime.serve.api_error import ApiError, ClientGone
from slmforge.runtime.serve.gate import GenerationGate, Overloaded
from slmforge.runtime.serve.request_body import read_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmforge.errors import UserError

if TYPE_CHECKING:
    from slmforge.runtime.answer.service import AnswerService, ChatParams

log = logging.getLogger("slmforge.serve")

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TOKENS_LIMIT = 1024
DEFAULT_QUEUE = 4
DEFAULT_BODY_TIMEOUT_S = 10.0
MAX_EMBED_INPUTS = 256
MAX_MESSAGES = 256
MAX_TOKENS_FIELD = 1 << 20  # the config's limit decides; this only keeps absurd numbers out of messages


@dataclass
class ServerConfig:
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT
    queue: int = DEFAULT_QUEUE
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    parallel: int = 1  # answers generated at once (a batched backend decodes them in one llama.cpp context)


# -- request bodies ----------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields we do not use (user, logprobs, ...)


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_Body):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_FIELD)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_FIELD)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(1 << 63), lt=1 << 64)  # llama.cpp keeps 32 bits of it
    repeat_penalty: float | None = Field(default=None, ge=1, le=2)  # llama.cpp's extension; bundle default 1.1
    n: int = Field(default=1, ge=1, le=1)
    rag: bool = True  # slmforge extension: retrieval on by default
    k: int | None = Field(default=None, ge=1, le=32)  # slmforge extension: passages to retrieve


class EmbeddingRequest(_Body):
    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"


class FeedbackRequest(_Body):
    request_id: str | None = None
    id: str | None = None
    rating: bool | int | str
    correction: str | None = None
    comment: str | None = None
    prompt: str | None = None
    completion: str | None = None


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"invalid field '{where}': {first['msg']} ({len(exc.errors())} problem(s) in the request)"


# -- helpers -----------------------------------------------------------------------------------------


def check_key(request: Request, api_key: str | None) -> None:
    if not api_key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer <key>' with the key given to "
                            "slmforge serve --api-key", kind="authentication_error",
                       headers={"WWW-Authenticate": "Bearer"})


def _parse(model: type[BaseModel], obj: dict[str, Any]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(400, _validation_message(exc)) from None


def _overloaded(exc: Overloaded) -> ApiError:
    kind = "rate_limit_error" if exc.status == 429 else "service_unavailable"
    return ApiError(exc.status, str(exc), kind=kind, headers={"Retry-After": str(exc.retry_after_s)})


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def new_request_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


# -- the app -----------------------------------------------------------------------------------------


def create_app(service: AnswerService, config: ServerConfig | None = None) -> FastAPI:
    """The API over ``service``, which turns each question into a routed answer."""
    config = config or ServerConfig()
    model_gate = GenerationGate(config.queue, name="model", workers=config.parallel)
    embed_gate = GenerationGate(config.queue, name="embedder")
    started = time.time()
    streams: set[Any] = set()  # stop() of every running stream, for SIGTERM

    def begin_shutdown(grace_s: float) -> None:
        """SIGTERM (from uvicorn's signal handler): refuse new work, end running streams with a final event now,
        and stop plain answers (503) just before uvicorn would cancel them after ``grace_s``."""
        model_gate.draining = embed_gate.draining = True
        for stop in list(streams):
            stop()
        timer = threading.Timer(max(0.0, grace_s - 2), service.stopping.set)
        timer.daemon = True
        timer.start()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        model_gate.draining = embed_gate.draining = True  # SIGTERM: refuse new work, stop what runs
        service.stopping.set()
        await asyncio.get_running_loop().run_in_executor(None, model_gate.shutdown)
        embed_gate.shutdown()
        service.close()

    app = FastAPI(title="slmforge", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.config = service, config
    app.state.gates = {"model": model_gate, "embedder": embed_gate}
    app.state.begin_shutdown = begin_shutdown

    async def read_body(request: Request, model: type[BaseModel]) -> Any:
        return _parse(model, await read_json(request, config.max_body_bytes, config.body_timeout_s))

    def record(route: str, status: int, attrs: dict[str, Any] | None = None, error: str | None = None,
               started_at: float | None = None) -> None:
        row = {"http.route": route, "http.response.status_code": status, **(attrs or {})}
        if error:
            row["error.type"] = error
        if started_at is not None and "gen_ai.server.request.duration" not in row:
            row["gen_ai.server.request.duration"] = round(time.perf_counter() - started_at, 4)
        try:
            service.record(row)
        except Exception:  # telemetry must never take a request down
            log.exception("telemetry write failed")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        record(request.url.path, exc.status, error=exc.kind)
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # 404, 405 of routing
        return ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                        headers=dict(exc.headers or {})).response()

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> JSONResponse:
        log.info("client left before sending the whole request on %s", request.url.path)
        record(request.url.path, 499, error="client_disconnected")
        return ApiError(499, "client closed the connection", kind="client_disconnected").response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        record(request.url.path, 500, error=exc.__class__.__name__)
        return ApiError(500, f"internal error ({exc.__class__.__name__}); see the server log",
                        kind="server_error").response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "draining" if model_gate.draining else "ok", "model": service.model_name,
                "backend": service.backend_name, "uptime_s": round(time.time() - started, 1),
                "queue": model_gate.stats(), "batch": service.batch_stats(), "cache": service.cache_stats()}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request, config.api_key)
        created = int(started)
        return {"object": "list", "data": [
            {"id": service.model_name, "object": "model", "created": created, "owned_by": "slmforge"},
            {"id": service.embedder_name, "object": "model", "created": created, "owned_by": "slmforge"},
        ]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        t0 = time.perf_counter()
        check_key(request, config.api_key)
        body: ChatRequest = await read_body(request, ChatRequest)
        max_tokens = body.max_completion_tokens or body.max_tokens or service.default_max_tokens
        if max_tokens > config.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {config.max_tokens_limit}",
                           param="max_tokens")
        if body.messages[-1].role != "user":
            raise ApiError(400, "the last message must come from the user (it is the question)", param="messages")
        question = body.messages[-1].text().strip()
        if not question:
            raise ApiError(400, "the last user message is empty", param="messages")
        history = [{"role": m.role, "content": m.text()} for m in body.messages[:-1] if m.role in ("user", "assistant")]
        params = service.params(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                                seed=body.seed, use_rag=body.rag, k=body.k, repeat_penalty=body.repeat_penalty)
        rid = new_request_id()
        try:
            model_gate.admit()
        except Overloaded as exc:
            raise _overloaded(exc) from None
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return await _stream_chat(rid, question, history, params, include_usage, t0)
        job_start = time.perf_counter()
        try:
            answer = await model_gate.run(service.ask, question, history, params, rid)
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        except Overloaded as exc:
            raise _overloaded(exc) from None
        finally:
            model_gate.release(time.perf_counter() - job_start)
        record("/v1/chat/completions", 200, answer.telemetry, started_at=t0)
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": service.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                         "finish_reason": answer.finish_reason}],
            "usage": answer.usage(), "citations": answer.citations, "slmforge": answer.details(),
        }

    async def _stream_chat(rid: str, question: str, history: list[dict[str, Any]], params: ChatParams,
                           include_usage: bool, t0: float) -> StreamingResponse:
        """Generate on the model's thread, hand deltas to the event loop, send them as SSE chunks."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(kind: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (server stopped): nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, (kind, item))

        def work() -> None:
            job_start = time.perf_counter()
            try:
                if cancel.is_set():  # stopped (shutdown) while it waited in the queue
                    return
                stream = service.ask_stream(question, history, params, rid, cancel)
                for delta in stream:
                    put("delta", delta)
                if not cancel.is_set():
                    put("done", stream.result)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop, reported to the client
                put("error", exc)
            finally:
                model_gate.release(time.perf_counter() - job_start)

        def stop() -> None:  # SIGTERM; runs in the signal handler on the loop's thread
            cancel.set()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, ("stop", None))

        try:
            model_gate.submit(work)  # submitted now, so the slot is released even if the client never reads
        except RuntimeError:  # the executor is shut down: the server is draining
            model_gate.release()
            raise ApiError(503, "the server is shutting down", kind="service_unavailable",
                           headers={"Retry-After": "5"}) from None
        streams.add(stop)
        try:
            first = await events.get()  # wait for the first token: a prompt that cannot run is a plain HTTP error
        except BaseException:
            streams.discard(stop)
            cancel.set()
            raise
        if first[0] in ("error", "stop"):
            streams.discard(stop)
        if first[0] == "stop":
            raise ApiError(503, "the server is shutting down; ask again later", kind="service_unavailable",
                           headers={"Retry-After": "5"})
        if first[0] == "error":
            cancel.set()
            if isinstance(first[1], UserError):
                raise ApiError(400, str(first[1]))
            if isinstance(first[1], Overloaded):
                raise _overloaded(first[1])
            raise first[1]
        base = {"id": rid, "object": "chat.completion.chunk", "model": service.model_name}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return _sse({**base, "created": int(time.time()),
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        async def body() -> AsyncIterator[str]:
            done = False
            try:
                yield chunk({"role": "assistant", "content": ""})
                kind, item = first
                while True:
                    if kind == "delta":
                        yield chunk({"content": item})
                        kind, item = await events.get()
                        continue
                    if kind == "done":
                        yield chunk({}, item.finish_reason, citations=item.citations, slmforge=item.details())
                        if include_usage:
                            yield _sse({**base, "created": int(time.time()), "choices": [], "usage": item.usage()})
                        record("/v1/chat/completions", 200, item.telemetry, started_at=t0)
                    elif kind == "stop":  # SIGTERM: the answer so far stands, cut like a length limit
                        yield chunk({}, "length", slmforge={"stopped": "server_shutdown"})
                        record("/v1/chat/completions", 200, {"gen_ai.response.id": rid}, started_at=t0,
                               error="server_shutdown")
                    else:
                        message = str(item) if isinstance(item, UserError) else f"internal error ({item!r})"
                        yield _sse({"error": {"message": message, "type": "server_error"}})
                        record("/v1/chat/completions", 200, {"gen_ai.response.id": rid}, started_at=t0,
                               error=item.__class__.__name__)
                    done = True
                    yield "data: [DONE]\n\n"
                    return
            finally:
                streams.discard(stop)
                if not done:  # the client went away mid-stream: stop generating for nobody
                    cancel.set()
                    record("/v1/chat/completions", 499, {"gen_ai.response.id": rid}, started_at=t0,
                           error="client_disconnected")

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Request-Id": rid})

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        check_key(request, config.api_key)
        body: EmbeddingRequest = await read_body(request, EmbeddingRequest)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if len(texts) > MAX_EMBED_INPUTS:
            raise ApiError(400, f"{len(texts)} inputs; send at most {MAX_EMBED_INPUTS} per request", param="input")
        try:
            embed_gate.admit()
        except Overloaded as exc:
            raise _overloaded(exc) from None
        job_start = time.perf_counter()
        try:
            vectors, tokens = await embed_gate.run(service.embed, texts)
        finally:
            embed_gate.release(time.perf_counter() - job_start)
        data = []
        for i, vec in enumerate(vectors):
            value: Any = (base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
                          if body.encoding_format == "base64" else [float(x) for x in vec])
            data.append({"object": "embedding", "index": i, "embedding": value})
        record("/v1/embeddings", 200, {"gen_ai.operation.name": "embeddings", "gen_ai.usage.input_tokens": tokens,
                                       "gen_ai.request.model": service.embedder_name}, started_at=t0)
        return {"object": "list", "data": data, "model": service.embedder_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        check_key(request, config.api_key)
        body: FeedbackRequest = await read_body(request, FeedbackRequest)
        rid = body.request_id or body.id
        if not rid:
            raise ApiError(400, "give the 'request_id' (the 'id' of the chat completion you rate)", param="request_id")
        try:
            feedback_id = service.feedback(rid, body.rating, correction=body.correction, comment=body.comment,
                                           prompt=body.prompt, completion=body.completion)
        except LookupError as exc:
            raise ApiError(404, str(exc), param="request_id") from None
        except UserError as exc:
            raise ApiError(400, str(exc)) from None
        return {"object": "feedback", "id": feedback_id, "request_id": rid, "stored": True}

    return app


def _exit_quietly(signum: int, frame: Any) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; landing here makes that a clean exit (0)."""


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8080, graceful_timeout_s: int = 30) -> None:
    """Serve until SIGTERM/SIGINT; uvicorn then stops accepting, lets running requests finish, and returns."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            begin = getattr(app.state, "begin_shutdown", None)
            if begin is not None and not self.should_exit:
                begin(graceful_timeout_s)  # streams end now with a final event, not cut after the grace period
            super().handle_exit(sig, frame)

    # limit_concurrency counts open connections too: room for slow clients (cut by the body timeout)
    # next to the real ones, beyond which uvicorn answers 503 at once
    uv_config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                               timeout_graceful_shutdown=graceful_timeout_s, limit_concurrency=1024)
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        Server(uv_config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
