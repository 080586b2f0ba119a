"""Changing the sign-in address: the change waits for the link mailed to the new address, the old
address is told when it is asked for and when it takes effect, the account page shows it pending
(cancel, send again), a taken address is answered like a free one, and the address is not
reserved meanwhile."""

from __future__ import annotations

from email.message import EmailMessage

import httpx2
from sqlalchemy import select

from identity.accounts import new_browser
from identity.appkeys import DB
from identity.db.models import Account, AccountChange, OutboxEvent
from identity.mail import read_outbox
from tests.support import PASSWORD, Browser, Hub, form

NEW = "ann.new@example.com"
NEW_PASSWORD = "purple elephant dancing quietly"
PENDING = '<div class="notice" id="pending-email">'


def outbox(hub: Hub) -> list[EmailMessage]:
    return read_outbox(hub.settings.data_dir / "mail")


def mails_to(hub: Hub, to: str) -> list[EmailMessage]:
    return [m for m in outbox(hub) if m["To"] == to]


def link_in(hub: Hub, message: EmailMessage, path: str) -> str:
    for word in message.get_content().split():
        if word.startswith(f"{hub.url}{path}?token="):
            return word[len(hub.url) :]
    raise AssertionError(f"no {path} link in:\n{message.get_content()}")


async def ann(hub: Hub, browser: Browser, **kwargs: object) -> Account:
    await hub.add_user(verified=True, **kwargs)
    assert (await browser.sign_in()).status_code == 200
    return await account(hub)


async def account(hub: Hub, email: str | None = None) -> Account:
    async with hub.app[DB]() as db:
        found = await db.scalar(select(Account).where(Account.sub.is_not(None) if email is None else Account.email == email).order_by(Account.id))
    assert found is not None
    return found


async def ask(browser: Browser, email: str = NEW, password: str = PASSWORD, **values: str) -> tuple[httpx2.Response, httpx2.Response]:
    """Submit the details form with a new address; the POST's answer and the page it leads to."""
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    posted = await browser.http.post(f.action, data=f.fields | {"email": email, "current_password": password} | values)
    shown = await browser.go(posted.headers["location"]) if posted.status_code == 303 else posted
    return posted, shown


async def open_link(hub: Hub, url: str) -> httpx2.Response:
    """Open a mailed change link in a browser of its own (the new mailbox may be elsewhere)."""
    other = Browser(hub)
    try:
        page = await other.go(url)
        if page.status_code != 200:
            return page
        return await other.submit(page, "/account/email/confirm")
    finally:
        await other.aclose()


async def sign_in_status(hub: Hub, email: str, password: str = PASSWORD) -> int:
    b = Browser(hub)
    try:
        page = await b.go("/sign-in")
        response = await b.http.post("/sign-in", data=form(page.text, "/sign-in").fields | {"email": email, "password": password})
        return response.status_code
    finally:
        await b.aclose()


async def email_events(hub: Hub, sub: str) -> list[list[str]]:
    async with hub.app[DB]() as db:
        events = (await db.scalars(select(OutboxEvent).where(OutboxEvent.key == sub).order_by(OutboxEvent.id))).all()
    return [e.payload["changed"] for e in events if "email" in e.payload.get("changed", [])]


async def test_a_new_address_waits_for_its_link_then_becomes_the_confirmed_sign_in_address(hub: Hub, browser: Browser) -> None:
    before = await ann(hub, browser)
    posted, page = await ask(browser, given_name="Annie")
    assert posted.status_code == 303
    assert "We sent a link to the new address. Your sign-in address changes once it is opened." in page.text
    assert PENDING in page.text and f"<strong>{NEW}</strong> becomes your sign-in address" in page.text
    assert form(page.text, "/account/details").fields["email"] == "ann@example.com"

    # Nothing about the address changed: the other details did, and only they reach services.
    pending = await account(hub)
    assert (pending.email, pending.email_verified, pending.given_name) == ("ann@example.com", True, "Annie")
    assert await email_events(hub, before.sub) == []
    assert await sign_in_status(hub, "ann@example.com") == 303
    assert await sign_in_status(hub, NEW) == 400

    (link_mail,) = mails_to(hub, NEW)
    assert link_mail["Subject"] == "Confirm your new sign-in address"
    assert "ann@example.com" not in link_mail.get_content() and "Ann" not in link_mail.get_content()
    # (The sign-ins above from other browsers were mailed to her too: new browsers.)
    (asked,) = [m for m in mails_to(hub, "ann@example.com") if m["Subject"] != new_browser.SUBJECT]
    assert asked["Subject"] == "A change of your sign-in email address was asked for"
    assert f"to {NEW}" in asked.get_content() and f"{hub.url}/reset-password" in asked.get_content()

    done = await open_link(hub, link_in(hub, link_mail, "/account/email/confirm"))
    assert done.status_code == 200
    assert f"Your sign-in address is now {NEW}, and it is confirmed." in done.text

    after = await account(hub)
    assert (after.email, after.email_verified) == (NEW, True)
    async with hub.app[DB]() as db:
        change = await db.scalar(select(AccountChange).where(AccountChange.account_id == after.id).order_by(AccountChange.version.desc()))
    assert change is not None and (change.fields, change.channel, change.actor) == (["email", "email_verified"], "person", after.sub)
    assert await email_events(hub, after.sub) == [["email", "email_verified"]]
    changed = mails_to(hub, "ann@example.com")[-1]
    assert changed["Subject"] == "Your sign-in email address was changed" and f"to {NEW}" in changed.get_content()
    assert await sign_in_status(hub, NEW) == 303
    assert await sign_in_status(hub, "ann@example.com") == 400
    assert PENDING not in (await browser.go("/account")).text

    # The link is used up.
    again = await open_link(hub, link_in(hub, link_mail, "/account/email/confirm"))
    assert again.status_code == 400 and "This link no longer works" in again.text


async def test_a_taken_address_is_answered_like_a_free_one_and_its_owner_is_told(hub: Hub, browser: Browser) -> None:
    await ann(hub, browser)
    await hub.add_user("bob@example.com", given_name="Bob", verified=True)
    free_post, free_page = await ask(browser, email="free@example.com")
    taken_post, taken_page = await ask(browser, email="bob@example.com")
    assert free_post.status_code == taken_post.status_code == 303
    assert free_post.headers["location"] == taken_post.headers["location"]
    assert free_page.status_code == taken_page.status_code == 200
    assert free_page.text.replace("free@example.com", "X") == taken_page.text.replace("bob@example.com", "X")
    assert "cannot be used" not in taken_page.text

    (tried,) = mails_to(hub, "bob@example.com")
    assert tried["Subject"] == "Someone tried to use your email address"
    assert "?token=" not in tried.get_content() and "ann@example.com" not in tried.get_content() and "Ann" not in tried.get_content()
    assert (await account(hub, "bob@example.com")).version == 1
    assert (await account(hub, "ann@example.com")).email == "ann@example.com"

    # Sending "the link" again for the taken address tells its owner again; still no link.
    page = await browser.go("/account")
    await browser.submit(page, "/account/email/resend")
    assert [m["Subject"] for m in mails_to(hub, "bob@example.com")] == ["Someone tried to use your email address"] * 2
    assert all("?token=" not in m.get_content() for m in mails_to(hub, "bob@example.com"))


async def test_the_address_is_not_reserved_and_confirming_a_taken_one_fails_clearly(hub: Hub, browser: Browser) -> None:
    await ann(hub, browser)
    await ask(browser)
    (link_mail,) = mails_to(hub, NEW)

    # Someone else registers the pending address meanwhile: nothing stops them.
    other = Browser(hub)
    try:
        page = await other.go("/register")
        registered = await other.submit(
            page, "/register", email=NEW, password=PASSWORD, given_name="Nia", family_name="Newcomer", birthdate="1990-05-17"
        )
    finally:
        await other.aclose()
    assert registered.status_code == 200
    assert (await account(hub, NEW)).given_name == "Nia"

    refused = await open_link(hub, link_in(hub, link_mail, "/account/email/confirm"))
    assert refused.status_code == 409
    assert "That address is taken" in refused.text and "your sign-in address stays as it was" in refused.text
    assert (await account(hub, "ann@example.com")).email_verified is True
    assert PENDING not in (await browser.go("/account")).text  # the change is over
    assert [m["Subject"] for m in mails_to(hub, "ann@example.com")] == ["A change of your sign-in email address was asked for"]


async def test_a_pending_change_can_be_sent_again_or_cancelled(hub: Hub, browser: Browser) -> None:
    await ann(hub, browser)
    await ask(browser)
    page = await browser.go("/account")
    resent = await browser.submit(page, "/account/email/resend")
    assert "We sent a link to the new address." in resent.text
    first, second = mails_to(hub, NEW)
    assert (await open_link(hub, link_in(hub, first, "/account/email/confirm"))).status_code == 400  # replaced

    cancelled = await browser.submit(resent, "/account/email/cancel")
    assert "The change of your sign-in address is cancelled." in cancelled.text and PENDING not in cancelled.text
    dead = await open_link(hub, link_in(hub, second, "/account/email/confirm"))
    assert dead.status_code == 400
    assert (await account(hub)).email == "ann@example.com"


async def test_a_new_password_cancels_a_pending_change(hub: Hub, browser: Browser) -> None:
    """Whoever asked for the change may be the one a new password locks out."""
    await ann(hub, browser)
    await ask(browser)
    (link_mail,) = mails_to(hub, NEW)
    page = await browser.go("/account/password")
    done = await browser.submit(page, "/account/password", current_password=PASSWORD, password=NEW_PASSWORD)
    assert "Password changed" in done.text
    assert PENDING not in (await browser.go("/account")).text
    dead = await open_link(hub, link_in(hub, link_mail, "/account/email/confirm"))
    assert dead.status_code == 400
    assert (await account(hub)).email == "ann@example.com"


async def test_an_unconfirmed_old_address_is_not_told_the_new_one(hub: Hub, browser: Browser) -> None:
    """The old address was never confirmed: it may be anyone's, so the mail names no address."""
    await hub.add_user()
    await browser.sign_in()
    await ask(browser)
    (asked,) = mails_to(hub, "ann@example.com")
    assert NEW not in asked.get_content()
    await open_link(hub, link_in(hub, mails_to(hub, NEW)[0], "/account/email/confirm"))
    changed = mails_to(hub, "ann@example.com")[-1]
    assert changed["Subject"] == "Your sign-in email address was changed" and NEW not in changed.get_content()
    assert (await account(hub)).email_verified is True


async def test_changing_the_address_needs_the_password(hub: Hub, browser: Browser) -> None:
    await ann(hub, browser)
    for password in ("", "not my password at all"):
        posted, page = await ask(browser, password=password)
        assert posted.status_code == 400
        assert "Enter your current password to change your email address." in page.text
    assert outbox(hub) == []
    assert PENDING not in (await browser.go("/account")).text
