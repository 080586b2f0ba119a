"""What every page handler shares: rendering with a CSRF token, the policy for new passwords,
password hashing off the event loop, sending mail after commit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from identity.accounts.passwords import BREACHED, check_password
from identity.mail import MailError
from identity.web import csrf
from identity.web.appkeys import BREACH_API, HASH_POOL, HASHER, MAIL_TASKS, MAILER, SETTINGS
from identity.web.errors import BadInput

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
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.config_dict[HASH_POOL], request.config_dict[HASHER].hash, password)


async def verify_password(request: web.Request, stored_hash: str | None, password: str) -> bool:
    """Check a password; with no stored hash, spend the same time and answer False."""
    loop = asyncio.get_running_loop()
    hasher = request.config_dict[HASHER]
    if stored_hash is None:
        await loop.run_in_executor(request.config_dict[HASH_POOL], hasher.dummy_verify, password)
        return False
    return await loop.run_in_executor(request.config_dict[HASH_POOL], hasher.verify, stored_hash, password)


async def send_mail(request: web.Request, messages: list[EmailMessage]) -> None:
    """Send mail after the work that produced it committed. By default it goes out in the
    background, so a page answers in the same time whether or not it sent anything (no
    account enumeration through timing); the application waits for it at shutdown."""
    if not messages:
        return
    mailer = request.config_dict[MAILER]

    async def deliver() -> None:
        for message in messages:
            try:
                await mailer.send(message)
            except MailError:
                log.exception("sending %r failed", message["Subject"])

    if not request.config_dict[SETTINGS].mail_in_background:
        await deliver()
        return
    tasks = request.config_dict[MAIL_TASKS]
    task = asyncio.create_task(deliver())
    tasks.add(task)
    task.add_done_callback(tasks.discard)


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
