"""No dead ends: the privacy policy at /privacy, linked from registration, consent and every
page's footer; a new confirmation link from the account page and from every dead link's page
(throttled, and silent about who is registered); a next step on every error page."""

from __future__ import annotations

import re

import httpx2
import pytest

from identity.mail import read_outbox
from tests.identity.pages.test_register import register
from tests.support import SQLITE_ALONE, Browser, Hub, RelyingParty, authorize_through, form

pytestmark = SQLITE_ALONE

RESENT = "If an account with that address is waiting for its address to be confirmed, we have sent a new link to it."


def confirmations(hub: Hub, to: str) -> list[str]:
    """The /verify-email links mailed to ``to``, oldest first."""
    mails = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == to and m["Subject"] == "Confirm your email address"]
    return [w[len(hub.url) :] for m in mails for w in m.get_content().split() if w.startswith(f"{hub.url}/verify-email?token=")]


async def test_the_policy_is_readable_html_with_headings_and_paragraphs(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/privacy")
    assert page.status_code == 200
    assert "<pre" not in page.text
    assert "<h1>Privacy policy</h1>" in page.text
    assert '<h2 id="linked-sony-accounts-one-sign-in">Linked Sony accounts (“One Sign In”)</h2>' in page.text
    assert '<a href="#contact-us">Contact us</a>' in page.text
    assert "<p class=\"in-short\"><strong>In short:</strong> How can you contact Sony Europe about your personal information?</p>" in page.text
    assert "<h3>Information that you provide us</h3>" in page.text
    assert "<li>Provide customer care, warranty, returns and other after sales services</li>" in page.text
    assert len(re.findall(r"<p>", page.text)) > 50


async def test_the_policy_is_linked_from_registration_consent_and_every_footer(hub: Hub, browser: Browser) -> None:
    for path in ("/register", "/sign-in", "/reset-password", "/no-such-page"):
        page = await browser.go(path)
        footer = page.text.split("<footer>")[1]
        assert '<a href="/privacy">Privacy policy</a>' in footer, path
    register = await browser.go("/register")
    main = register.text.split("<footer>")[0]
    assert 'our <a href="/privacy">privacy policy</a>' in main

    await hub.add_user(verified=True)
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await browser.sign_in()
    url, _ = await rp.start()
    consent = await browser.go(url)
    assert "Allow Garden Centre to use your account?" in consent.text
    assert '<a href="/privacy">our privacy policy</a>' in consent.text.split("<footer>")[0]
    # Named in the same words as on the account page.
    assert "<li>Your email address</li>" in consent.text


async def test_a_signed_out_person_gets_a_new_link_from_a_dead_links_page(hub: Hub, browser: Browser) -> None:
    await register(browser)
    (first,) = confirmations(hub, "new@example.com")
    dead = await browser.go("/verify-email?token=made-up")
    assert dead.status_code == 400
    assert "This link no longer works" in dead.text
    resend = form(dead.text, "/verify-email/resend")
    assert "csrf_token" in resend.fields and "email" in resend.fields

    answer = await browser.submit(dead, "/verify-email/resend", email="New@Example.com")
    assert answer.status_code == 200 and RESENT in answer.text
    links = confirmations(hub, "new@example.com")
    assert len(links) == 2
    # The new link works, and the older one no longer does.
    assert (await browser.go(first)).status_code == 400
    confirm = await browser.go(links[-1])
    done = await browser.submit(confirm, "/verify-email")
    assert "Address confirmed" in done.text


async def test_the_answer_does_not_say_who_is_registered(hub: Hub, browser: Browser) -> None:
    await register(browser)
    await hub.add_user(email="done@example.com", verified=True)
    dead = await browser.go("/verify-email?token=made-up")
    answers = [await browser.submit(dead, "/verify-email/resend", email=e) for e in ("new@example.com", "done@example.com", "nobody@example.com")]
    assert {a.status_code for a in answers} == {200}
    assert len({a.text.split("<main")[1].split("</main>")[0] for a in answers}) == 1
    assert len(confirmations(hub, "new@example.com")) == 2
    assert confirmations(hub, "done@example.com") == [] and confirmations(hub, "nobody@example.com") == []


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"throttle_requests_per_email": 3}


async def test_resending_is_throttled_per_address_so_it_cannot_mail_bomb(hub: Hub, browser: Browser) -> None:
    await register(browser)
    dead = await browser.go("/verify-email?token=made-up")
    statuses = [(await browser.submit(dead, "/verify-email/resend", email="new@example.com")).status_code for _ in range(5)]
    # Registering counted once for the address already.
    assert statuses == [200, 200, 429, 429, 429]
    assert len(confirmations(hub, "new@example.com")) == 1 + 2
    # An address nobody registered is counted the same way.
    statuses = [(await browser.submit(dead, "/verify-email/resend", email="nobody@example.com")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_the_account_banner_sends_the_signed_in_person_a_new_link(hub: Hub, browser: Browser) -> None:
    await register(browser)
    page = await browser.sign_in("new@example.com")
    banner = page.text.split('id="not-confirmed"')[1].split("</div>")[0]
    assert "Your email address is not confirmed yet" in banner
    assert 'action="/verify-email/resend"' in banner and 'name="email"' not in banner
    answer = await browser.submit(page, "/verify-email/resend")
    assert answer.status_code == 200
    assert "We sent a new confirmation link to new@example.com." in answer.text
    assert len(confirmations(hub, "new@example.com")) == 2
    # Without the CSRF token, nothing is sent.
    refused = await browser.http.post("/verify-email/resend", data={})
    assert refused.status_code == 403
    assert len(confirmations(hub, "new@example.com")) == 2


async def test_a_used_verification_link_offers_a_new_one(hub: Hub, browser: Browser) -> None:
    await register(browser)
    (link,) = confirmations(hub, "new@example.com")
    confirm = await browser.go(link)
    await browser.submit(confirm, "/verify-email")
    used = await browser.submit(confirm, "/verify-email")
    assert used.status_code == 400
    form(used.text, "/verify-email/resend")


@pytest.mark.parametrize(
    ("path", "step"),
    [
        ("/reset-password/confirm?token=made-up", '<a class="button" href="/reset-password">Ask for a new reset link</a>'),
        ("/account/email/confirm?token=made-up", 'action="/account/email/resend"'),
        ("/guardian/confirm?token=made-up", "account page"),
        ("/no-such-page", '<a class="button" href="/account">Go to your account</a>'),
        ("/i/made-up", '<a class="button" href="/account">Go to your account</a>'),
    ],
)
async def test_every_error_page_offers_the_next_step(hub: Hub, browser: Browser, path: str, step: str) -> None:
    page = await browser.go(path)
    assert page.status_code in (400, 404)
    assert step in page.text


async def test_an_authorization_error_page_offers_the_next_step(hub: Hub) -> None:
    async with httpx2.AsyncClient(base_url=hub.url) as http:
        page = await http.get("/authorize", params={"client_id": "nobody", "response_type": "code"})
    assert page.status_code == 400
    assert '<a class="button" href="/account">Go to your account</a>' in page.text


async def test_consent_and_the_account_page_use_the_same_words(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await browser.sign_in()
    await authorize_through(rp, browser, scope="openid email phone")
    account = await browser.go("/account")
    assert "<li>Your phone number</li>" in account.text and "<li>Your email address</li>" in account.text
    assert "openid email phone" not in account.text
