"""API authentication: a token as `Authorization: Bearer` or as the password of HTTP Basic.

Basic is accepted because some clients take only a URL: Home Assistant's
Ollama integration works with `https://any-name:TOKEN@paladin.local`.
"""

from __future__ import annotations

import base64
import binascii

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from . import tokens
from .errors import APIError

PUBLIC = ("/health", "/static/")


def presented_token(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return credentials.strip() or None
    if scheme == "basic":
        try:
            _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password or None
    return None


class TokenAuth:
    """Every route but the public ones and the web UI's page needs a live token."""

    def __init__(self, app: ASGIApp, db, error_response):
        self.app, self.db, self.error_response = app, db, error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/" or path.startswith(PUBLIC):
            return await self.app(scope, receive, send)
        token = presented_token(Headers(scope=scope))
        name = tokens.verify(self.db, token) if token else None
        if name is None:
            err = APIError(401, "a valid API token is required (Authorization: Bearer TOKEN, or HTTP Basic "
                                "with the token as password); create one with 'paladin token create'",
                           kind="authentication_error", code="invalid_api_key")
            response = self.error_response(path, err)
            response.headers["WWW-Authenticate"] = 'Bearer realm="paladin", Basic realm="paladin"'
            return await response(scope, receive, send)
        scope.setdefault("state", {})["token_name"] = name
        await self.app(scope, receive, send)
