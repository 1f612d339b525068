"""The OpenAPI document (``GET /api/v1/openapi.json``), true to what the server answers.

Every status >= 400 an operation can answer is documented with the one error body
(:class:`~server.errors.ErrorBody`), the ``error.type`` values it carries at that status (an ``enum``)
and the headers it always sends. Which statuses, from two places and nowhere else:

* the route's shape, read here (:func:`shape_errors`): a key (``Authorization: Bearer``) -> 401, 429;
  an admin-only or device-only key -> 403; the database (a key or a session) -> 503; ``POST`` -> 400
  (a bad ``Content-Length``; malformed JSON where there is a body), 413, 415 (the body guard,
  :mod:`server.middleware`); path or query parameters or a body -> 422; a path id -> 404 (an id that
  does not exist, or another cohort's);
* the route's own rules, declared where the route is defined with ``responses=raises(Conflict, ...)``
  (:func:`raises`): the :class:`~server.errors.ApiError` classes its code raises beyond its shape.

A method a path does not answer (``OPTIONS`` included) is not an operation of the document: it gets 405
with ``Allow`` (:mod:`server.app`). The request bodies that routes parse themselves
(``server.deps.unit_of_work``) go into the components as FastAPI's declared bodies do.
``tests/integration/test_server_openapi.py`` holds the document to what the app answers (schemathesis,
every check; the findings it accepts are listed with their reasons in
``tests/data/openapi_allowlist.toml``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from pydantic import BaseModel
from starlette.routing import BaseRoute

from server import deps
from server.errors import (
    ApiError,
    BadRequest,
    DatabaseUnavailable,
    ErrorBody,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMedia,
)

__all__ = ["document", "raises", "shape_errors", "STATUSES"]

_ERROR_TYPES = "x-error-types"  # carries raises()'s types from the decorator to document(); removed there

# status -> (what it means, the headers every such answer carries: name -> description)
STATUSES: dict[int, tuple[str, dict[str, str]]] = {
    400: ("Malformed JSON (`malformed_json`) or a value the route refuses (`bad_request`; detail.field "
          "names it).", {}),
    401: ("Missing, unknown or revoked key.", {"WWW-Authenticate": "`Bearer`."}),
    403: ("The key is valid but may not use this endpoint.", {}),
    404: ("No such resource for this caller (an id that does not exist, or another cohort's).", {}),
    409: ("The request conflicts with the resource's state.", {}),
    413: ("Request body too large.", {}),
    415: ("Request body is not application/json.", {}),
    416: ("Range not satisfiable.", {"Content-Range": "`bytes */<size>`: the content's size."}),
    422: ("A field is invalid (detail.field names it).", {}),
    429: ("Rate limit exceeded.", {"Retry-After": "Seconds to wait before the next request."}),
    503: ("The database is unavailable: nothing was stored, send the same request again.",
          {"Retry-After": "Seconds to wait before retrying."}),
}
_VALIDATION = "validation_error"  # server.responses: a request that fails its schema
_MALFORMED = "malformed_json"


def raises(*errors: type[ApiError] | tuple[type[ApiError], str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route whose code raises ``errors`` (classes, or ``(class, why)`` to say
    when) beyond what its shape implies (:func:`shape_errors`)."""
    out: dict[int | str, dict[str, Any]] = {}
    for item in errors:
        cls, why = item if isinstance(item, tuple) else (item, None)
        entry = out.setdefault(cls.status, {"description": STATUSES[cls.status][0], _ERROR_TYPES: []})
        if why:
            entry["description"] = why
        entry[_ERROR_TYPES].append(cls.type)
    return out


def _dependants(d: Dependant) -> Iterator[Dependant]:
    yield d
    for sub in d.dependencies:
        yield from _dependants(sub)


def _has_body(route: APIRoute) -> bool:
    return route.body_field is not None or "requestBody" in (route.openapi_extra or {})


def shape_errors(route: APIRoute, method: str) -> dict[int, set[str]]:
    """The error statuses (and their ``error.type`` values) that ``method`` on ``route`` can answer
    whatever its code does: those of its key, its database session, its body and its parameters."""
    nodes = list(_dependants(route.dependant))
    calls = {n.call for n in nodes}
    keyed = any(isinstance(c, SecurityBase) for c in calls)
    out: dict[int, set[str]] = {}

    def add(*errors: type[ApiError]) -> None:
        for cls in errors:
            out.setdefault(cls.status, set()).add(cls.type)

    if keyed:
        add(Unauthorized, RateLimited, DatabaseUnavailable)
    if calls & {deps.require_admin, deps.require_device}:
        add(Forbidden)
    if deps.get_session in calls:
        add(DatabaseUnavailable)
    if method in ("POST", "PUT", "PATCH"):  # the body guard: Content-Length, size, content type
        add(BadRequest, PayloadTooLarge, UnsupportedMedia)
    if _has_body(route):
        out.setdefault(400, set()).add(_MALFORMED)
    if _has_body(route) or any(n.path_params or n.query_params for n in nodes):
        out.setdefault(422, set()).add(_VALIDATION)
    if any(n.path_params for n in nodes):
        add(NotFound)
    return out


def _error_response(status: int, types: set[str], declared: dict[str, Any] | None) -> dict[str, Any]:
    description, headers = STATUSES[status]
    body = {
        "allOf": [
            {"$ref": "#/components/schemas/ErrorBody"},
            {"properties": {"error": {"properties": {"type": {"enum": sorted(types)}}}}},
        ]
    }
    out: dict[str, Any] = {
        "description": (declared or {}).get("description", description),
        "content": {"application/json": {"schema": body}},
    }
    if headers:
        out["headers"] = {
            name: {"description": text, "required": True, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return out


def _document_errors(routes: Iterable[BaseRoute], schema: dict[str, Any]) -> None:
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods:
            op = schema["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            answers = op.setdefault("responses", {})
            errors = shape_errors(route, method)
            for code, declared in list(answers.items()):
                if code.isdigit() and int(code) >= 400:
                    # FastAPI documents its own 422 (another body) for any parameter: ours replaces it
                    types = declared.get(_ERROR_TYPES, [_VALIDATION] if code == "422" else [])
                    if not types:
                        raise ValueError(f"{method} {route.path}: {code} documented without raises()")
                    errors.setdefault(int(code), set()).update(types)
            for status, types in sorted(errors.items()):
                answers[str(status)] = _error_response(status, types, answers.get(str(status)))
            op["responses"] = dict(sorted(answers.items()))


def _add_components(schema: dict[str, Any], models: tuple[type[BaseModel], ...]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in js.pop("$defs", {}).items():
            components.setdefault(name, sub)
        components.setdefault(model.__name__, js)
    # FastAPI's default 422 body, replaced on every operation by the one error body
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def document(app: FastAPI, routes: Iterable[BaseRoute], *, bodies: tuple[type[BaseModel], ...] = ()) -> None:
    """Make ``app.openapi()`` the true document: the error statuses of each operation of ``routes`` (the
    app's API routes; see the module docstring), and ``bodies``, the request bodies routes parse
    themselves, in the components."""
    routes = tuple(routes)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _add_components(schema, (ErrorBody, *bodies))
            _document_errors(routes, schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
