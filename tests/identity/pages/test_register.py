"""Registration, email verification, children and their guardians, and passwords (reset and
change), through the pages and the mail they send."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage

import httpx2
import pytest
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account
from identity.mail import read_outbox
from tests.support import PASSWORD, Browser, Hub, form

NEW_PASSWORD = "purple elephant dancing quietly"
WRONG = "The email address or password is incorrect."
BREACHED = (
    "This password has appeared in a data breach, so attackers try it early. Choose a different one, "
    "such as several words that mean something only to you."
)


def outbox(hub: Hub) -> list[EmailMessage]:
    return read_outbox(hub.settings.data_dir / "mail")


def link_in(hub: Hub, message: EmailMessage, path: str) -> str:
    """The hub-relative URL of the link to ``path`` in a mail."""
    for word in message.get_content().split():
        if word.startswith(f"{hub.url}{path}?token="):
            return word[len(hub.url) :]
    raise AssertionError(f"no {path} link in:\n{message.get_content()}")


def years_ago(years: int) -> str:
    today = dt.date.today()
    try:
        return today.replace(year=today.year - years).isoformat()
    except ValueError:  # 29 February
        return dt.date(today.year - years, 3, 1).isoformat()


async def register(browser: Browser, **values: str) -> httpx2.Response:
    fields = {
        "email": "new@example.com",
        "password": PASSWORD,
        "given_name": "Nia",
        "family_name": "Newcomer",
        "birthdate": "1990-05-17",
    } | values
    page = await browser.go("/register")
    return await browser.submit(page, "/register", **fields)


async def account(hub: Hub, email: str) -> Account | None:
    async with hub.app[DB]() as db:
        return await db.scalar(select(Account).where(Account.email == email))


async def sign_in_status(hub: Hub, email: str, password: str) -> int:
    b = Browser(hub)
    try:
        page = await b.go("/sign-in")
        response = await b.http.post("/sign-in", data=form(page.text, "/sign-in").fields | {"email": email, "password": password})
        return response.status_code
    finally:
        await b.aclose()


# Registration ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("password123", "This password is too common; choose something harder to guess."),
        ("short", "Use at least 10 characters."),
        ("elephants", "Use at least 10 characters."),
        ("strawberries", "A single dictionary word is easy to guess; add more words."),
        ("new@example.com", "Don&#39;t use your email address or name as your password."),
        ("aaaaaaaaaaaa", "A single repeated character is easy to guess; use several words instead."),
        ("Password123!", BREACHED),
        ("Monkey123456", BREACHED),
        ("qwerty123456!", BREACHED),
        ("Summer2024!!", "A common word with a few numbers or symbols added is easy to guess; add more words."),
        ("P@ssw0rd2024", "A common word with a few numbers or symbols added is easy to guess; add more words."),
    ],
)
async def test_weak_password_is_refused(hub: Hub, browser: Browser, password: str, message: str) -> None:
    page = await register(browser, password=password)
    assert page.status_code == 400
    assert "Please correct the fields marked below." in page.text
    assert f'<p class="field-error" id="password-error" role="alert">{message}</p>' in page.text
    # What was typed is kept, except the password.
    assert 'value="new@example.com"' in page.text
    assert 'name="password" type="password" autocomplete="new-password" required minlength="10" maxlength="128">' in page.text
    assert await account(hub, "new@example.com") is None
    assert outbox(hub) == []


async def test_registration_sends_a_verification_link_that_works_once(hub: Hub, browser: Browser) -> None:
    page = await register(browser)
    assert page.status_code == 200
    assert "<h1>Check your email</h1>" in page.text
    created = await account(hub, "new@example.com")
    assert created is not None
    assert created.email_verified is False
    assert created.status == "active"
    assert (created.given_name, created.family_name, created.name) == ("Nia", "Newcomer", "Nia Newcomer")
    assert created.birthdate == dt.date(1990, 5, 17)

    (mail,) = outbox(hub)
    assert mail["To"] == "new@example.com"
    assert mail["Subject"] == "Confirm your email address"
    url = link_in(hub, mail, "/verify-email")

    # Opening the link only shows a form: mail scanners that follow links confirm nothing.
    confirm = await browser.go(url)
    assert confirm.status_code == 200
    assert "<h1>Confirm your email address</h1>" in confirm.text
    assert (await account(hub, "new@example.com")).email_verified is False  # type: ignore[union-attr]

    done = await browser.submit(confirm, "/verify-email")
    assert done.status_code == 200
    assert "Address confirmed" in done.text
    assert (await account(hub, "new@example.com")).email_verified is True  # type: ignore[union-attr]

    again = await browser.go(url)
    assert again.status_code == 400
    assert "This link no longer works" in again.text
    replay = await browser.submit(confirm, "/verify-email")
    assert replay.status_code == 400
    assert "This link no longer works" in replay.text


async def test_unknown_verification_token_is_refused(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/verify-email?token=made-up")
    assert page.status_code == 400
    assert "This link no longer works" in page.text


async def test_registered_person_can_sign_in(hub: Hub, browser: Browser) -> None:
    await register(browser)
    assert await sign_in_status(hub, "new@example.com", PASSWORD) == 303


async def test_existing_email_gets_the_same_page_and_a_different_mail(hub: Hub, browser: Browser) -> None:
    await hub.add_user("taken@example.com", given_name="Tess")
    fresh = await register(browser, email="fresh@example.com")
    taken = await register(browser, email="Taken@Example.com")
    assert fresh.status_code == taken.status_code == 200
    assert fresh.text == taken.text

    mails = outbox(hub)
    assert [(m["To"], m["Subject"]) for m in mails] == [
        ("fresh@example.com", "Confirm your email address"),
        ("taken@example.com", "You already have an account"),
    ]
    assert "/verify-email" not in mails[1].get_content()
    assert f"{hub.url}/reset-password" in mails[1].get_content()
    # The existing account is untouched.
    existing = await account(hub, "taken@example.com")
    assert existing is not None and existing.given_name == "Tess" and existing.version == 1
    async with hub.app[DB]() as db:
        assert len((await db.scalars(select(Account))).all()) == 2


async def test_missing_birthdate_is_refused(hub: Hub, browser: Browser) -> None:
    page = await register(browser, birthdate="")
    assert page.status_code == 400
    assert "Enter your date of birth." in page.text
    assert await account(hub, "new@example.com") is None


async def test_invalid_email_is_refused(hub: Hub, browser: Browser) -> None:
    page = await register(browser, email="not an address")
    assert page.status_code == 400
    assert "Enter an email address like name@example.com." in page.text
    assert outbox(hub) == []


# Children ----------------------------------------------------------------------------------------


async def test_child_without_guardian_email_is_refused(hub: Hub, browser: Browser) -> None:
    page = await register(browser, birthdate=years_ago(12))
    assert page.status_code == 400
    assert (
        '<p class="field-error" id="guardian_email-error" role="alert">'
        "You are under 16: enter a parent&#39;s or guardian&#39;s email address.</p>"
    ) in page.text
    assert await account(hub, "new@example.com") is None
    assert outbox(hub) == []


async def test_child_cannot_name_themself_as_guardian(hub: Hub, browser: Browser) -> None:
    page = await register(browser, birthdate=years_ago(12), guardian_email="new@example.com")
    assert page.status_code == 400
    assert "Enter your parent&#39;s or guardian&#39;s own email address." in page.text


async def test_child_with_guardian_is_pending_and_guardian_is_mailed(hub: Hub, browser: Browser) -> None:
    page = await register(
        browser,
        email="win.a.prize@example.com",
        given_name="Claim your prize at",
        family_name="prizes.example",
        birthdate=years_ago(12),
        guardian_email="Parent@Example.com",
    )
    assert page.status_code == 200
    assert "Check your email" in page.text
    child = await account(hub, "win.a.prize@example.com")
    assert child is not None
    assert child.status == "pending_guardian"
    assert child.guardian_email == "parent@example.com"
    assert child.guardian_consent_at is None

    mails = outbox(hub)
    assert sorted((m["To"], m["Subject"]) for m in mails) == [
        ("parent@example.com", "Your consent is needed for a child's account"),
        ("win.a.prize@example.com", "Confirm your email address"),
    ]
    guardian_mail = next(m for m in mails if m["To"] == "parent@example.com")
    # Nothing the child typed as text reaches the guardian: only the date of birth they gave.
    content = guardian_mail.get_content()
    assert "prize" not in content.lower() and "Claim" not in content and "win.a" not in content
    born = dt.date.fromisoformat(years_ago(12))
    assert f"gave their date of birth as {born.day} {born:%B %Y}" in content
    assert child.delete_after is not None and f"deleted on {child.delete_after.day} {child.delete_after:%B %Y}" in content

    # The child sees that their account is waiting.
    await browser.sign_in("win.a.prize@example.com")
    page = await browser.go("/account")
    assert "Your parent or guardian has not yet agreed to your account." in page.text

    guardian = Browser(hub)
    try:
        url = link_in(hub, guardian_mail, "/guardian/confirm")
        confirm = await guardian.go(url)
        assert confirm.status_code == 200
        done = await guardian.submit(confirm, "/guardian/confirm")
        assert done.status_code == 200
        assert "Consent recorded" in done.text
        again = await guardian.go(url)
        assert again.status_code == 400
    finally:
        await guardian.aclose()
    child = await account(hub, "win.a.prize@example.com")
    assert child is not None and child.status == "active" and child.guardian_consent_at is not None


async def test_sixteen_year_old_needs_no_guardian(hub: Hub, browser: Browser) -> None:
    page = await register(browser, birthdate=years_ago(16))
    assert page.status_code == 200
    created = await account(hub, "new@example.com")
    assert created is not None and created.status == "active"


# Password reset ------------------------------------------------------------------------------------


async def _request_reset(browser: Browser, email: str) -> httpx2.Response:
    page = await browser.go("/reset-password")
    return await browser.submit(page, "/reset-password", email=email)


async def test_reset_request_looks_the_same_for_known_and_unknown_addresses(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    known = await _request_reset(browser, "ann@example.com")
    unknown = await _request_reset(browser, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    assert known.text == unknown.text
    assert "Check your email" in known.text
    assert [(m["To"], m["Subject"]) for m in outbox(hub)] == [("ann@example.com", "Reset your password")]


async def test_reset_link_sets_a_new_password_once(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    # A session from before the reset.
    before = Browser(hub)
    await before.sign_in()
    assert (await before.go("/account")).status_code == 200

    await _request_reset(browser, "ann@example.com")
    (mail,) = outbox(hub)
    url = link_in(hub, mail, "/reset-password/confirm")

    page = await browser.go(url)
    assert page.status_code == 200
    assert "Choose a new password" in page.text

    weak = await browser.submit(page, "/reset-password/confirm", password="password123")
    assert weak.status_code == 400
    assert "This password is too common; choose something harder to guess." in weak.text

    done = await browser.submit(page, "/reset-password/confirm", password=NEW_PASSWORD)
    assert done.status_code == 200
    assert "Password changed" in done.text

    assert await sign_in_status(hub, "ann@example.com", PASSWORD) == 400
    assert await sign_in_status(hub, "ann@example.com", NEW_PASSWORD) == 303

    # The reset ended the sessions that existed.
    after = await before.http.get("/account")
    await before.aclose()
    assert after.status_code == 302

    reopened = await browser.go(url)
    assert reopened.status_code == 400
    assert "This link no longer works" in reopened.text
    replay = await browser.submit(page, "/reset-password/confirm", password="another long passphrase here")
    assert replay.status_code == 400
    assert "This link no longer works" in replay.text
    assert await sign_in_status(hub, "ann@example.com", NEW_PASSWORD) == 303


async def test_newer_reset_link_replaces_the_older_one(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await _request_reset(browser, "ann@example.com")
    await _request_reset(browser, "ann@example.com")
    first, second = outbox(hub)
    old = await browser.go(link_in(hub, first, "/reset-password/confirm"))
    assert old.status_code == 400
    new = await browser.go(link_in(hub, second, "/reset-password/confirm"))
    assert new.status_code == 200


# Changing a known password -----------------------------------------------------------------------


async def test_change_password_requires_the_current_one(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    other = Browser(hub)
    await other.sign_in()

    page = await browser.go("/account/password")
    assert page.status_code == 200
    wrong = await browser.submit(page, "/account/password", current_password="not my password", password=NEW_PASSWORD)
    assert wrong.status_code == 400
    assert "Your current password is not correct." in wrong.text
    assert await sign_in_status(hub, "ann@example.com", PASSWORD) == 303

    weak = await browser.submit(page, "/account/password", current_password=PASSWORD, password="qwertyuiop")
    assert weak.status_code == 400
    assert "This password is too common; choose something harder to guess." in weak.text

    done = await browser.submit(page, "/account/password", current_password=PASSWORD, password=NEW_PASSWORD)
    assert done.status_code == 200
    assert "Password changed" in done.text
    assert await sign_in_status(hub, "ann@example.com", PASSWORD) == 400
    assert await sign_in_status(hub, "ann@example.com", NEW_PASSWORD) == 303

    # This browser stays signed in; the other one is signed out.
    assert (await browser.http.get("/account")).status_code == 200
    assert (await other.http.get("/account")).status_code == 302
    await other.aclose()


async def test_change_password_page_needs_a_session(hub: Hub, browser: Browser) -> None:
    response = await browser.http.get("/account/password")
    assert response.status_code == 302
    assert response.headers["location"] == "/sign-in?next=/account/password"
