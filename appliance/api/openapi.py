"""The OpenAPI document, generated from the routes actually registered.

Each handler carries its summary and answer shape in its docstring's first line and a small
`@describe(...)` annotation; the document walks `app.router`, so a route cannot exist without
appearing in it (a test checks every documented route answers 401 without a token).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .auth import is_public

_PARAM = re.compile(r"\{(\w+)(:[^}]*)?\}")


def describe(summary: str, *, query: dict[str, str] | None = None, body: str | None = None,
             tag: str = "peer") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(handler: Callable[..., Any]) -> Callable[..., Any]:
        handler.__openapi__ = {"summary": summary, "query": query or {}, "body": body,  # type: ignore[attr-defined]
                               "tag": tag}
        return handler

    return mark


def build_document(app: web.Application, version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for resource in app.router.resources():
        info = resource.get_info()
        template = info.get("formatter") or info.get("path")
        if not template:
            continue
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", template)
        for route in resource:
            if route.method == "HEAD":
                continue
            meta = getattr(route.handler, "__openapi__", None)
            if meta is None:
                continue
            op: dict[str, Any] = {
                "summary": meta["summary"], "tags": [meta["tag"]],
                "operationId": f"{route.method.lower()}_{route.handler.__name__}",
                "responses": {"200": {"description": "OK"}},
            }
            params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in _PARAM.findall(template) for name in [name[0]]]
            params += [{"name": name, "in": "query", "required": False,
                        "description": text, "schema": {"type": "string"}}
                       for name, text in meta["query"].items()]
            if params:
                op["parameters"] = params
            if meta["body"]:
                op["requestBody"] = {"description": meta["body"], "content": {
                    "application/json": {"schema": {"type": "object"}}}}
            if not is_public(path):
                op["security"] = [{"bearer": []}]
                op["responses"]["401"] = {"description": "no or invalid bearer token"}
                if route.method not in ("GET", "HEAD"):
                    op["responses"]["403"] = {"description": "the token may only read"}
            paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Vaquero peer API", "version": version},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": dict(sorted(paths.items())),
    }
