"""HTTP errors of the serving API in OpenAI's ``{"error": {...}}`` shape, so clients report them cleanly."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An HTTP error in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class ClientGone(Exception):
    """The client closed the connection before its request was read: logged as 499, nobody gets an answer."""
