"""Read and parse an API request body as untrusted input: every way it can be bad is a 4xx, never a 500.

Bounds, each checked before the next step can fail on it: size (413, also while reading), time to
receive the whole body (408, so a client that sends half a body and stops does not hold a
connection), integer length and non-finite numbers (Python refuses >4300-digit ints with a
ValueError; NaN/Infinity are not JSON), nesting depth (the C parser recurses), and Unicode (a lone
``\\ud800`` escape parses but breaks the tokenizer). A client that disconnects mid-body is
``ClientGone`` (499), not an error of the server.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from fastapi import Request
from slmforge.runtime.serve.api_error import ApiError, ClientGone
from starlette.requests import ClientDisconnect

MAX_DEPTH = 64
MAX_INT_DIGITS = 20  # any count, id or seed an API takes fits; longer is an attack or a bug


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer with {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _check_tree(obj: Any) -> None:
    """Nesting at most ``MAX_DEPTH`` and every string valid Unicode (iterative: a deep body must not recurse here)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "request body holds an unpaired UTF-16 surrogate escape (like \\ud800); "
                                    "send valid Unicode text") from None
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels")
            values = list(item.items()) if isinstance(item, dict) else item
            for value in values:
                if isinstance(value, tuple):  # a (key, value) pair: keys are strings too
                    stack.append((value[0], depth))
                    value = value[1]
                stack.append((value, depth + 1))


async def _read_bytes(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; this server accepts at most {limit}",
                       kind="request_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise ApiError(413, f"request body is over {limit} bytes, the most this server accepts",
                           kind="request_too_large")
    return bytes(body)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object within the bounds above, or ``ApiError(400)`` saying what is wrong."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 text; send JSON") from None
    try:
        obj = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    except RecursionError:
        raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # from the number hooks
        raise ApiError(400, f"request body is not valid JSON for this API: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(obj).__name__}")
    _check_tree(obj)
    return obj


async def read_json(request: Request, limit: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object: at most ``limit`` bytes, received within ``timeout_s`` seconds."""
    try:
        body = await asyncio.wait_for(_read_bytes(request, limit), timeout_s)
    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
        raise ApiError(408, f"request body not received within {timeout_s:g} s; send the whole body at once",
                       kind="request_timeout", headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ClientGone() from None
    return parse_json_object(body)
