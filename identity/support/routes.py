"""Every URL of the support console (relative to ``/support``), in one place."""

from __future__ import annotations

from aiohttp import web


def add_routes(console: web.Application) -> None:
    r = console.router
    del r  # the console's pages register here
