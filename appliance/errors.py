"""The two error types every layer may raise: an HTTP answer that is not a success, and a
reason a peer cannot start.

They live at the bottom of the package map because the parts that raise them do: the boot
plane's artifact route (netboot/) and the GitHub webhook (source/) answer HTTP below the
API, and the config, the BMC secrets, the signing keys and the API tokens are each read at
start by their own layer. One type each means one JSON shape for every HTTP error, mapped
in one place (`api.app.errors`), and one `except` in `vaq-peer serve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "StartupError"]

# The code an error gets when its raiser names none, by status.
DEFAULT_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 409: "conflict", 413: "too_large", 500: "internal", 502: "bad_gateway",
                 503: "unavailable", 504: "timeout"}


class ApiError(Exception):
    """An HTTP answer that is not a success: `{"error": code, "message": message, **fields}`
    with `status`. `code` is for scripts (stable, snake_case), `message` for a person (what
    went wrong and, where there is one, the fix); `fields` carry what a client acts on (the
    leader to retry at, the URL that failed). A handler raises it; the API's middleware, or
    a handler outside the API with `response()`, turns it into the answer."""

    def __init__(self, status: int, code: str | None, message: str, *,
                 headers: Mapping[str, str] | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or DEFAULT_CODES.get(status, "error")
        self.message = message
        self.fields = fields
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.fields}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


class StartupError(Exception):
    """A reason this peer cannot start, in words for the person running it (which file, what
    is wrong with it, the fix). `vaq-peer serve` prints it and exits 1, without a
    traceback; anything else escaping the start is a bug and keeps its traceback."""
