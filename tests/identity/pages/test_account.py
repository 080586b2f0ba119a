"""The person's account page: editing basic details (versioned, recorded), validation, linked
services and marketing preferences. Changing the sign-in address: test_email_change.py."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account, AccountChange
from identity.oidc import scopes
from tests.support import Browser, Hub, RelyingParty, form, sign_in_through


@pytest.fixture
async def signed_in(hub: Hub, browser: Browser) -> str:
    sub = await hub.add_user(verified=True)
    response = await browser.sign_in()
    assert response.status_code == 200 and "Your account" in response.text
    return sub


async def load(hub: Hub) -> tuple[Account, list[AccountChange]]:
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account))
        assert account is not None
        changes = (
            await db.scalars(select(AccountChange).where(AccountChange.account_id == account.id).order_by(AccountChange.version))
        ).all()
    return account, list(changes)


async def save(browser: Browser, **values: str | None) -> tuple[int, str, str]:
    """Submit the details form with ``values`` changed (None: leave the field out, as a browser
    does with an unticked box); return the POST's status, its Location and the page finally shown."""
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    data = {k: v for k, v in (f.fields | values).items() if v is not None}
    response = await browser.http.post(f.action, data=data)
    location = response.headers.get("location", "")
    shown = await browser.go(location) if response.status_code == 303 else response
    return response.status_code, location, shown.text


async def test_account_page_needs_a_session(hub: Hub, browser: Browser) -> None:
    response = await browser.http.get("/account")
    assert response.status_code == 302
    assert response.headers["location"] == "/sign-in?next=/account"


async def test_account_page_shows_the_details(hub: Hub, signed_in: str, browser: Browser) -> None:
    page = await browser.go("/account")
    fields = form(page.text, "/account/details").fields
    assert fields["email"] == "ann@example.com"
    assert fields["given_name"] == "Ann"
    assert fields["family_name"] == "Example"
    assert not any(name.startswith("marketing_") for name in fields)


async def test_editing_details_bumps_the_version_and_records_the_change(hub: Hub, signed_in: str, browser: Browser) -> None:
    before, changes = await load(hub)
    assert before.version == 1
    assert [(c.version, c.fields, c.channel) for c in changes] == [(1, ["created"], "cli")]

    status, location, page = await save(
        browser, given_name="Annabel", phone_number="+44 7700 900123", zoneinfo="Europe/London", locale="en_GB"
    )
    assert status == 303
    assert location == "/account?saved=1"
    assert "Your details are saved and are being sent to your linked services." in page

    after, changes = await load(hub)
    assert after.version == 2
    assert after.given_name == "Annabel"
    assert after.name == "Annabel Example"
    assert after.phone_number == "+447700900123"
    assert after.zoneinfo == "Europe/London"
    assert after.locale == "en-GB"
    assert after.updated_at > before.updated_at
    last = changes[-1]
    assert last.version == 2
    assert last.channel == "person"
    assert last.actor == signed_in
    assert sorted(last.fields) == sorted(["given_name", "name", "phone_number", "zoneinfo", "locale"])
    assert form(page, "/account/details").fields["given_name"] == "Annabel"


async def test_saving_unchanged_details_changes_nothing(hub: Hub, signed_in: str, browser: Browser) -> None:
    status, location, _ = await save(browser)
    assert status == 303
    after, changes = await load(hub)
    assert after.version == 1
    assert len(changes) == 1


async def test_address_is_saved_as_a_claim(hub: Hub, signed_in: str, browser: Browser) -> None:
    status, _, _ = await save(browser, street_address="1 High Street", locality="Bath", postal_code="BA1 1AA", country="UK")
    assert status == 303
    after, changes = await load(hub)
    assert after.address == {"street_address": "1 High Street", "locality": "Bath", "postal_code": "BA1 1AA", "country": "UK"}
    assert changes[-1].fields == ["address"]
    # Saving the same address again is not a change.
    status, _, _ = await save(browser)
    assert status == 303
    again, _ = await load(hub)
    assert again.version == after.version


async def test_invalid_phone_and_zoneinfo_are_refused_and_change_nothing(
    hub: Hub, signed_in: str, browser: Browser
) -> None:
    status, location, page = await save(browser, given_name="Changed", phone_number="07700 900123", zoneinfo="Mars/Olympus")
    assert status == 400
    assert location == ""
    assert "Please correct the fields marked below." in page
    assert (
        '<p class="field-error" id="phone_number-error" role="alert">Use the international format, e.g. +447700900123.</p>'
        in page
    )
    assert '<p class="field-error" id="zoneinfo-error" role="alert">Use a time zone name such as Europe/Paris.</p>' in page
    # What was typed is shown again for correction.
    fields = form(page, "/account/details").fields
    assert fields["phone_number"] == "07700 900123"
    assert fields["zoneinfo"] == "Mars/Olympus"
    assert fields["given_name"] == "Changed"

    after, changes = await load(hub)
    assert after.version == 1
    assert after.given_name == "Ann"
    assert after.phone_number is None
    assert after.zoneinfo is None
    assert len(changes) == 1


async def test_invalid_locale_and_future_birthdate_are_refused(hub: Hub, signed_in: str, browser: Browser) -> None:
    status, _, page = await save(browser, locale="english please", birthdate="2999-01-01")
    assert status == 400
    assert "Use a language tag such as en-GB or fr." in page
    assert "A date of birth cannot be in the future." in page
    after, _ = await load(hub)
    assert after.version == 1 and after.locale is None and after.birthdate is None


async def test_linked_services_are_listed_after_authorization(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    service = await hub.add_service(name="Garden Centre")
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await browser.sign_in()
    page = await browser.go("/account")
    assert "You have not signed in to any member service yet." in page.text
    assert "Garden Centre" not in page.text

    await sign_in_through(rp, browser)
    page = await browser.go("/account")
    assert "You have not signed in to any member service yet." not in page.text
    row = page.text.split('<th scope="row" data-label="Service">Garden Centre</th>')[1].split("</tr>")[0]
    assert '<td data-label="Status">Linked</td>' in row
    # The scopes in the same plain words as the consent page (one mapping for both).
    for _, words in scopes.described("openid profile email offline_access"):
        assert f"<li>{words}</li>" in row


async def test_marketing_opt_in_records_the_time(hub: Hub, signed_in: str, browser: Browser) -> None:
    before, _ = await load(hub)
    assert (before.marketing_news, before.marketing_news_at) == (False, None)

    status, _, page = await save(browser, marketing_news="on")
    assert status == 303
    after, changes = await load(hub)
    assert after.marketing_news is True
    assert after.marketing_news_at is not None
    assert after.marketing_news_at >= before.created_at
    assert (after.marketing_competitions, after.marketing_competitions_at) == (False, None)
    assert (after.marketing_offers, after.marketing_offers_at) == (False, None)
    assert changes[-1].fields == ["marketing_news"]
    assert changes[-1].channel == "person"
    assert form(page, "/account/details").fields.get("marketing_news") == "on"

    # Opting out (the box left unticked) records the time of that change too.
    opted_in_at = after.marketing_news_at
    status, _, page = await save(browser, marketing_news=None)
    page_fields = form(page, "/account/details").fields
    assert "marketing_news" not in page_fields
    out, changes = await load(hub)
    assert out.marketing_news is False
    assert out.marketing_news_at is not None and out.marketing_news_at >= opted_in_at
    assert changes[-1].fields == ["marketing_news"]
    assert out.version == 3
