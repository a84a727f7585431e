"""Errors the API reports to clients, in OpenAI's error shape."""

from __future__ import annotations


class APIError(Exception):
    """A request failed for a reason the client should be told about.

    `kind` and `code` follow OpenAI's error object; the status is the HTTP status.
    """

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def unavailable(message: str, retry_after: int = 5) -> APIError:
    return APIError(503, message, kind="server_error", code="unavailable", retry_after=retry_after)
