"""By default mail leaves after the response (so timing reveals nothing); it still arrives."""

from __future__ import annotations

import asyncio

import pytest

from identity.mail import read_outbox
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
