"""What each JSON API handler promises, for the OpenAPI document at ``/api/openapi.json``.

A handler is described where it is written, with :func:`operation`; :func:`openapi.document`
walks the router and reads the descriptions, so a route cannot be served undocumented by
accident (a test checks every ``/api/`` route has one). Bodies are the pydantic models of
``schemas``; their JSON Schemas (draft 2020-12, as OpenAPI 3.1 uses) come from pydantic."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

Auth = Literal["person", "service", "none"]
H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str
    tag: str
    auth: Auth
    #: Scopes the person's token must hold (``auth="person"``).
    scopes: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    #: status -> model of the JSON body (None: no body). Error statuses answer ``schemas.api.Problem``.
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    #: Query parameters: name -> (description, required).
    query: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: Extra response headers by status: status -> {header: description}.
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    #: Request headers the operation reads: name -> description.
    request_headers: dict[str, str] = field(default_factory=dict)
    #: A response that is not JSON (a file download): status -> media type.
    media: dict[int, str] = field(default_factory=dict)


SPEC_ATTRIBUTE = "__openapi_operation__"


def operation(
    summary: str,
    *,
    tag: str,
    auth: Auth,
    responses: dict[int, type[BaseModel] | None],
    body: type[BaseModel] | None = None,
    scopes: tuple[str, ...] = (),
    query: dict[str, tuple[str, bool]] | None = None,
    headers: dict[int, dict[str, str]] | None = None,
    request_headers: dict[str, str] | None = None,
    media: dict[int, str] | None = None,
) -> Callable[[H], H]:
    """Describe a handler. Its docstring becomes the operation's description."""

    def describe(handler: H) -> H:
        setattr(
            handler,
            SPEC_ATTRIBUTE,
            Operation(
                summary=summary,
                description=inspect.cleandoc(handler.__doc__ or ""),
                tag=tag,
                auth=auth,
                scopes=scopes,
                body=body,
                responses=responses,
                query=query or {},
                headers=headers or {},
                request_headers=request_headers or {},
                media=media or {},
            ),
        )
        return handler

    return describe


def described(handler: Any) -> Operation | None:
    return getattr(handler, SPEC_ATTRIBUTE, None)
