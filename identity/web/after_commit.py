"""What a request's unit of work does once it has committed, asked for inside it: mail to send,
back-channel logout notices to POST, the notice sender to wake. Each function registers its
work with :func:`identity.db.units.on_commit`; :func:`identity.db.units.unit` runs it after a
commit, never after a rollback. Mail goes out after the answer (:func:`after_response`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from identity import notices
from identity.accounts import throttle
from identity.appkeys import DB, HTTP, MAIL_TASKS, MAILER, SETTINGS
from identity.db.engine import autocommit
from identity.db.units import on_commit
from identity.mail import MailError
from identity.oidc.logout import LogoutNotice, send_notices

log = logging.getLogger(__name__)


def mail(db: AsyncSession, request: web.Request, messages: list[EmailMessage]) -> None:
    """Send ``messages`` once ``db`` commits (:func:`send_mail`)."""
    if messages:
        on_commit(db, lambda: send_mail(request, messages))


def logout(db: AsyncSession, request: web.Request, sent: list[LogoutNotice]) -> None:
    """POST the back-channel logout notices ``sent`` once ``db`` commits, before the answer."""
    if sent:
        config = request.config_dict
        on_commit(db, lambda: send_notices(config[HTTP], sent, config[SETTINGS].backchannel_logout_timeout))


def wake(db: AsyncSession, request: web.Request) -> None:
    """Wake an in-process notice sender once ``db`` commits: the notices it wrote go out now."""
    config = request.config_dict
    on_commit(db, lambda: notices.wake(config))


#: The name of every task :func:`after_response` starts.
AFTER_RESPONSE = "after-response"


async def after_response(request: web.Request, work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``work`` once the answer is on its way, so the answer's timing says nothing about it
    (``ONESIGNIN_MAIL_IN_BACKGROUND``; otherwise it runs now). A failure is logged, never
    answered. The application waits for such work at shutdown. ``work`` must not use
    ``request``: take what it needs from the application first."""

    async def run() -> None:
        try:
            await work()
        except Exception:
            log.exception("%s failed", what)

    if not request.config_dict[SETTINGS].mail_in_background:
        await run()
        return
    tasks = request.config_dict[MAIL_TASKS]
    task = asyncio.create_task(run(), name=f"{AFTER_RESPONSE}: {what}")
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def send_mail(request: web.Request, messages: list[EmailMessage]) -> None:
    """Send mail after the work that produced it committed. By default it goes out in the
    background, so a page answers in the same time whether or not it sent anything (no
    account enumeration through timing); the application waits for it at shutdown."""
    if not messages:
        return
    app = request.config_dict
    await after_response(request, lambda: deliver_mail(app, messages), "mail")


async def deliver_mail(app: Any, messages: list[EmailMessage]) -> None:
    """Send ``messages`` now (``app``: the application, or a request's ``config_dict``). A
    visitor can have the hub send only so much mail to one recipient
    (``ONESIGNIN_MAIL_PER_RECIPIENT`` an hour); beyond it nothing is sent, and the page that
    caused it answers the same. A message that cannot be sent is logged."""
    settings = app[SETTINGS]
    async with autocommit(app[DB]) as db:
        refused = [(await throttle.take(db, _recipient_key(m), throttle.mail_limit(settings))).refused for m in messages]
    for message, over in zip(messages, refused, strict=True):
        if over:
            log.info("%r not sent: its recipient had the limit of mail for now", message["Subject"])
            continue
        try:
            await app[MAILER].send(message)
        except MailError:
            log.exception("sending %r failed", message["Subject"])


def _recipient_key(message: EmailMessage) -> str:
    return throttle.email_key("mail", str(message["To"]))
