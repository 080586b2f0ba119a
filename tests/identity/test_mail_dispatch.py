"""By default mail, and whatever work depends on an address typed before signing in, happens
after the response (so timing reveals nothing); it still happens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import create_async_engine

from identity.appkeys import ENGINE, MAIL_TASKS
from identity.db.models import Account
from identity.mail import read_outbox
from identity.web.after_commit import AFTER_RESPONSE
from tests.support import PASSWORD, Browser, Hub


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"mail_in_background": True}


async def test_reset_mail_sent_in_the_background_arrives(hub: Hub, browser: Browser) -> None:
    await hub.add_user(password=PASSWORD)
    page = await browser.go("/reset-password")
    done = await browser.submit(page, "/reset-password", email="ann@example.com")
    assert "Check your email" in done.text
    for _ in range(200):  # bounded wait for the background task, not a timing assertion
        mails = read_outbox(hub.settings.data_dir / "mail")
        if mails:
            break
        await asyncio.sleep(0.05)
    assert [(m["To"], m["Subject"]) for m in mails] == [("ann@example.com", "Reset your password")]


@contextlib.asynccontextmanager
async def holding_the_account(hub: Hub, email: str) -> AsyncIterator[None]:
    """On Postgres, keep the work that issues a link to ``email``'s account from finishing while
    inside: the account's row is locked (a new link locks it, and its row needs it). SQLite has
    one writer, and the request itself writes (throttling counts the typed address), so nothing
    there can hold back the link alone; the statements each task ran are the proof there."""
    if not hub.settings.resolved_database_url.startswith("postgresql"):
        yield
        return
    engine = create_async_engine(hub.settings.resolved_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(select(Account.id).where(Account.email == email).with_for_update())
            yield
    finally:
        await engine.dispose()


async def test_a_reset_request_answers_before_the_address_is_looked_up(hub: Hub, browser: Browser) -> None:
    """Whatever depends on the address (the lookup, the link, the mail) runs after the answer.
    The request itself runs the same statements for an address with an account and one without
    (none about accounts or links) and answers the same bytes; on Postgres it answers while the
    known address's link cannot be written yet, so it never waits for that work; and that work
    then happens, in tasks of its own, for both."""
    await hub.add_user(password=PASSWORD)
    recorded: list[tuple[str, str]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        task = asyncio.current_task()
        recorded.append((task.get_name() if task else "", statement))

    engine = hub.app[ENGINE].sync_engine
    event.listen(engine, "before_cursor_execute", record)
    answers, answering, after = {}, {}, {}
    try:
        page = await browser.go("/reset-password")
        for email in ("nobody@example.com", "ann@example.com"):
            recorded.clear()
            async with holding_the_account(hub, email):
                answers[email] = await browser.submit(page, "/reset-password", email=email)
                # The request's own statements: aiohttp's connection tasks are unnamed ("Task-N"),
                # the hub's background loops (gauges, purges, sync) and after-response work are named.
                answering[email] = [s for name, s in recorded if name.startswith("Task-")]
            await asyncio.gather(*hub.app[MAIL_TASKS])  # the work after the answer, now let through
            after[email] = [s for name, s in recorded if name.startswith(AFTER_RESPONSE)]
    finally:
        event.remove(engine, "before_cursor_execute", record)

    known, unknown = answers["ann@example.com"], answers["nobody@example.com"]
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text and "Check your email" in known.text
    assert answering["ann@example.com"] == answering["nobody@example.com"]
    assert all("accounts" not in s and "email_tokens" not in s for s in answering["ann@example.com"])
    assert any("FROM accounts" in s for s in after["nobody@example.com"])
    assert any("INSERT INTO email_tokens" in s for s in after["ann@example.com"])
    assert [(m["To"], m["Subject"]) for m in read_outbox(hub.settings.data_dir / "mail")] == [("ann@example.com", "Reset your password")]
