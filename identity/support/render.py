"""Rendering a console page: the template gets the console session's CSRF token and the
signed-in agent."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web

from identity.support import forms
from identity.support.session import AGENT


def render(request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    context = dict(context or {})
    context["csrf_token"] = forms.token_for(request)
    context.setdefault("agent", request.get(AGENT))
    return aiohttp_jinja2.render_template(template, request, context, status=status)
