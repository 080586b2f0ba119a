"""New passwords checked with the Pwned Passwords range API when the operator enables it
(a local stand-in here): registration, reset and change refuse a password the API lists, go on
with the offline list alone when it does not answer, and hold no database connection while they
wait for it."""

from __future__ import annotations

import asyncio

import pytest

from tests.identity.pages.test_register import BREACHED, NEW_PASSWORD, account, link_in, outbox, register, sign_in_status
from tests.pwned_range import RangeStandIn, sha1
from tests.support import PASSWORD, Browser, Hub

STRONG = "lantern quiver mosaic tundra"


@pytest.fixture
def api_timeout() -> float:
    return 10.0


@pytest.fixture
def settings_overrides(pwned_range: RangeStandIn, api_timeout: float) -> dict[str, object]:
    # One database connection per hub, so a handler that held one while waiting on the API
    # would keep every other request from the database.
    return {
        "breached_password_api": True,
        "breached_password_api_url": pwned_range.url,
        "breached_password_api_timeout": api_timeout,
        "database_pool_size": 1,
    }


def refused(text: str) -> bool:
    return f'<p class="field-error" id="password-error" role="alert">{BREACHED}</p>' in text


async def test_registration_refuses_a_password_the_api_lists(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    pwned_range.breach(STRONG)
    page = await register(browser, password=STRONG)
    assert page.status_code == 400 and refused(page.text)
    assert await account(hub, "new@example.com") is None
    assert [r.prefix for r in pwned_range.requests] == [sha1(STRONG)[:5]]


async def test_registration_asks_nothing_about_a_password_the_policy_refuses(
    hub: Hub, browser: Browser, pwned_range: RangeStandIn
) -> None:
    for weak in ("password123", "Password123!", "Summer2024!!"):
        page = await register(browser, password=weak)
        assert page.status_code == 400
    assert pwned_range.requests == []


async def test_registration_accepts_a_password_the_api_does_not_list(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    pwned_range.breach("some other passphrase entirely")
    page = await register(browser, password=STRONG)
    assert page.status_code == 200 and "Check your email" in page.text
    assert await account(hub, "new@example.com") is not None
    assert len(pwned_range.requests) == 1


@pytest.mark.parametrize("api_timeout", [0.3])
async def test_registration_goes_on_when_the_api_does_not_answer_in_time(
    hub: Hub, browser: Browser, pwned_range: RangeStandIn
) -> None:
    pwned_range.breach(STRONG)
    pwned_range.behaviour = "hang"
    page = await register(browser, password=STRONG)
    assert page.status_code == 200 and "Check your email" in page.text
    assert pwned_range.received.is_set()
    # The offline list still counts.
    refused_offline = await register(browser, email="other@example.com", password="Password123!")
    assert refused_offline.status_code == 400 and refused(refused_offline.text)


async def test_registration_goes_on_when_the_api_answers_garbage(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    pwned_range.breach(STRONG)
    pwned_range.behaviour = "garbage"
    page = await register(browser, password=STRONG)
    assert page.status_code == 200
    assert await account(hub, "new@example.com") is not None


async def test_no_database_connection_is_held_while_the_api_is_asked(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    pwned_range.breach(STRONG)
    pwned_range.behaviour = "hang"
    registering = asyncio.create_task(register(browser, password=STRONG))
    try:
        await asyncio.wait_for(pwned_range.received.wait(), 60)
        # The registration now waits on the API; the hub's only connection is free meanwhile.
        await hub.add_user("ann@example.com", verified=True)
        assert await account(hub, "ann@example.com") is not None
        assert not registering.done()
    finally:
        pwned_range.release.set()
    page = await registering
    assert page.status_code == 400 and refused(page.text)


async def test_a_reset_refuses_a_password_the_api_lists(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    await hub.add_user(verified=True)
    page = await browser.go("/reset-password")
    await browser.submit(page, "/reset-password", email="ann@example.com")
    (mail,) = outbox(hub)
    page = await browser.go(link_in(hub, mail, "/reset-password/confirm"))
    pwned_range.breach(STRONG)
    refused_page = await browser.submit(page, "/reset-password/confirm", password=STRONG)
    assert refused_page.status_code == 400 and BREACHED in refused_page.text
    done = await browser.submit(page, "/reset-password/confirm", password=NEW_PASSWORD)
    assert done.status_code == 200 and "Password changed" in done.text
    assert await sign_in_status(hub, "ann@example.com", NEW_PASSWORD) == 303
    assert len(pwned_range.requests) == 2


async def test_a_change_refuses_a_password_the_api_lists(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    page = await browser.go("/account/password")
    pwned_range.breach(STRONG)
    refused_page = await browser.submit(page, "/account/password", current_password=PASSWORD, password=STRONG)
    assert refused_page.status_code == 400 and BREACHED in refused_page.text
    assert await sign_in_status(hub, "ann@example.com", PASSWORD) == 303
    assert [r.prefix for r in pwned_range.requests] == [sha1(STRONG)[:5]]


async def test_signing_in_does_not_ask_the_api(hub: Hub, browser: Browser, pwned_range: RangeStandIn) -> None:
    await hub.add_user(verified=True)
    assert await sign_in_status(hub, "ann@example.com", PASSWORD) == 303
    assert pwned_range.requests == []
