"""The API's error contract (DESIGN 3.1): every known failure maps to one of these."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A failure the client is told about as `{"error": {"code", "message"}}`."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


class BadRequest(ApiError):
    status, code = 400, "validation_error"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ClientClosed(ApiError):
    """Not an answer (nobody is left to read one): what the trace of an abandoned stream says.
    499 is the de-facto status for it (nginx's "client closed request")."""

    status, code = 499, "client_disconnected"


class Throttled(ApiError):
    status, code = 429, "throttled"


class ModelError(ApiError):
    status, code = 502, "model_error"


class UpstreamError(ApiError):
    """A dependency other than the model (e.g. Qdrant) failed."""

    status, code = 502, "upstream_error"


class ModelUnavailable(ApiError):
    status, code = 503, "model_unavailable"


class UpstreamTimeout(ApiError):
    status, code = 504, "upstream_timeout"
