"""Small response helpers shared by pages and provider endpoints."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from identity.i18n import _


def redirect(location: str, status: int = 302) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


def safe_next(value: str | None, default: str = "/account") -> str:
    """A same-site path to continue to after a page, never another origin."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def expired_interaction(request: web.Request) -> web.StreamResponse:
    """The page for an interaction (``/i/{uid}``) that is over, expired or not this browser's."""
    return aiohttp_jinja2.render_template(
        "message.html",
        request,
        {
            "title": _("This sign-in has expired"),
            "message": _("The sign-in request is no longer valid in this browser. Go back to the service and start again."),
        },
        status=400,
    )
