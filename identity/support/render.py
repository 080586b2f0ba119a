"""Rendering a console page: the template gets the CSRF token and the signed-in agent."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from identity.support.session import AGENT
from identity.web import csrf


def render(request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    context = dict(context or {})
    context["csrf_token"] = csrf.token_for(request)
    context.setdefault("agent", request.get(AGENT))
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    csrf.set_cookie(request, response)
    return response
