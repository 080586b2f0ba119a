"""What every page handler shares: rendering with a CSRF token, the policy for new passwords,
password hashing off the event loop, throttling, form fields. (Mail is sent after commit through
``identity.web.after_commit``.)"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from identity.accounts import throttle
from identity.accounts.passwords import BREACHED, check_password
from identity.appkeys import BREACH_API, DB, HASHING, SETTINGS
from identity.db.engine import autocommit
from identity.errors import BadInput
from identity.i18n import ngettext
from identity.web import csrf

log = logging.getLogger(__name__)


def render(request: web.Request, template: str, context: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    context = dict(context or {})
    context["csrf_token"] = csrf.token_for(request)
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    csrf.set_cookie(request, response)
    return response


async def new_password_problem(request: web.Request, password: str, context: Iterable[str]) -> str | None:
    """Why a new password is refused, or None: the password policy, then, when the operator
    enabled it, the Pwned Passwords API. Call it while no database connection is held."""
    if reason := check_password(password, context=context):
        return reason
    api = request.config_dict.get(BREACH_API)
    if api is not None and await api.seen(password):
        return BREACHED
    return None


async def hash_password(request: web.Request, password: str) -> str:
    """A new hash (raises ``HashQueueFull``, answered 503, when too many wait)."""
    return await request.config_dict[HASHING].hash(password)


async def too_many_requests(request: web.Request, email: str | None) -> int | None:
    """Count a request that makes the hub hash a password or send mail for a visitor, per client
    address and per typed address, before that work is done. Returns the seconds to wait when it
    is refused, else None."""
    per_address, per_email = throttle.request_limits(request.config_dict[SETTINGS])
    counts = [(throttle.address_key("requests", client_address(request)), per_address)]
    if email:
        counts.append((throttle.email_key("requests", email), per_email))
    async with autocommit(request.config_dict[DB]) as db:
        counted = await throttle.take_all(db, counts)
    return counted.wait if counted.refused else None


def slow_down(wait: int) -> str:
    """What a page says when a request is refused for a while (its title is "Not now")."""
    return ngettext(
        "Too many requests from here. Try again in %(num)d second.",
        "Too many requests from here. Try again in %(num)d seconds.",
        wait,
    )


def client_address(request: web.Request) -> str:
    """The address of the person's browser: the peer, or behind trusted proxies
    (``ONESIGNIN_TRUSTED_PROXIES``) the right-most X-Forwarded-For entry that is not a trusted
    proxy itself. Entries left of it could be written by anyone, so they are never believed."""
    remote = request.remote or "unknown"
    trusted = request.config_dict[SETTINGS].trusted_networks
    if not trusted or not _within(remote, trusted):
        return remote
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop if _is_ip(hop) else remote
        remote = hop
    return remote


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _within(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def field(form: Any, name: str, limit: int = 1000) -> str:
    """A text field of a posted form, cut to ``limit``; NULs are refused outright."""
    value = form.get(name, "")
    if not isinstance(value, str):
        return ""
    if "\x00" in value:
        raise BadInput(f"NUL in form field {name}")
    return value[:limit]
