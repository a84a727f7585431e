"""What can go wrong with a request, as the service's own words; no HTTP here.

The engine, the store and the request handlers raise these.  The web layer maps each class to a
status code and to the error shape of the API that was called (web/http.py `STATUS`, and an
exception handler per API), so the inference side never knows which dialect asked.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request cannot be served; the message tells the client why and what to do next."""

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message, self.param, self.retry_after = message, param, retry_after


class InvalidRequest(ServiceError):
    """The request itself is wrong: a missing or malformed field."""


class PromptTooLong(InvalidRequest):
    """The prompt and the tokens to generate do not fit the model's context."""


class NotFound(ServiceError):
    """The thing the request names does not exist on this box."""


class UnknownModel(NotFound):
    """The request names a model this box does not serve."""


class MethodNotAllowed(ServiceError):
    """The path exists, but not for this method."""


class Conflict(ServiceError):
    """The request clashes with what the box is doing or holds: a model download already running, an
    upload to the same file, a name already taken."""


class Unauthenticated(ServiceError):
    """The caller did not prove the identity the route requires."""


class Forbidden(ServiceError):
    """The caller is known, but this request is not one it may make (a stale or forged page)."""


class TooSlow(ServiceError):
    """The client did not send its request body in time."""


class TooLarge(ServiceError):
    """The request body is larger than the route accepts."""


class UnsupportedMediaType(ServiceError):
    """The body is not of the type the route reads (a JSON route sent a form or plain text)."""


class TooManyRequests(ServiceError):
    """One client address sent more requests, or more wrong tokens, than the box takes from it; retry
    after `retry_after` seconds."""


class ModelUnusable(ServiceError):
    """The model the request chose could not be loaded; the engine went back to the one it served."""


class QueueFull(ServiceError):
    """Too many requests wait for the model; retry after `retry_after` seconds."""


class DownloadFailed(ServiceError):
    """A model download the request started or waited for did not complete (the server, the pin, the disk)."""


class NotReady(ServiceError):
    """No model is loaded, or the service is shutting down."""


class NoSpace(ServiceError):
    """The data partition has no room for what the request would write."""


class GenerationFailed(ServiceError):
    """llama.cpp failed in the middle of a job; the engine lives on."""


class ModelError(RuntimeError):
    """A model file could not be loaded or used (raised where a model is loaded: the engine, its probe, the
    binding; the store and the handlers turn it into a ServiceError in their words)."""
