"""Where you're signed in: the account page lists the person's live sessions by browser and
system; signing one out ends it, tells its services by back-channel logout and revokes the
tokens issued through it (offline refresh tokens too); signing out everywhere does that for
every session and every token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.identity.oauth.test_logout import Receiver, receiver  # noqa: F401
from tests.support import Browser, Hub, RelyingParty, eventually, form, sign_in_through

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
async def rp(hub: Hub, receiver: Receiver) -> RelyingParty:  # noqa: F811
    service = await hub.add_service(name="Garden Centre", backchannel_logout_uri=receiver.url)
    found = RelyingParty(hub, service.client_id, service.client_secret)
    await found.discover()
    return found


@pytest.fixture
async def two_browsers(hub: Hub) -> AsyncIterator[tuple[Browser, Browser]]:
    await hub.add_user(verified=True)
    laptop, phone = Browser(hub), Browser(hub)
    laptop.http.headers["User-Agent"] = FIREFOX
    phone.http.headers["User-Agent"] = SAFARI
    await laptop.sign_in()
    await phone.sign_in()
    yield laptop, phone
    await laptop.aclose()
    await phone.aclose()


async def active(rp: RelyingParty, token: str) -> bool:
    """What introspection says of ``token`` (the service asking, as a service does)."""
    answer = await rp.post("/introspect", {"token": token})
    assert answer.status_code == 200, answer.text
    return bool(answer.json()["active"])


async def refreshes(rp: RelyingParty, token: dict[str, str]) -> bool:
    answer = await rp.post("/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    return answer.status_code == 200


async def test_the_account_page_lists_where_you_are_signed_in(hub: Hub, two_browsers: tuple[Browser, Browser]) -> None:
    laptop, _ = two_browsers
    page = await laptop.go("/account")
    section = page.text.split('<section id="sessions">')[1].split("</section>")[0]
    assert "<h2>Where you're signed in</h2>" in section
    assert "<strong>Firefox on Windows</strong> <span class=\"this\">(this browser)</span>" in section
    assert "<strong>Safari on iPhone</strong><br>" in section
    assert section.count('action="/account/sessions/end"') == 2
    assert 'action="/account/sessions/end-all"' in section


async def test_signing_one_browser_out(hub: Hub, rp: RelyingParty, receiver: Receiver, two_browsers: tuple[Browser, Browser]) -> None:  # noqa: F811
    laptop, phone = two_browsers
    on_phone, _ = await sign_in_through(rp, phone, scope="openid offline_access")
    on_laptop, _ = await sign_in_through(rp, laptop, scope="openid offline_access")
    page = await laptop.go("/account")
    phone_form = next(f for f in _forms(page.text, "/account/sessions/end") if "Safari on iPhone" in f[1])[0]
    done = await laptop.go("/account/sessions/end", method="POST", data=phone_form)
    assert "That browser is signed out" in done.text
    assert "Safari on iPhone" not in done.text.split('<section id="sessions">')[1].split("</section>")[0]
    # The phone is signed out; the laptop is not.
    assert (await phone.go("/account")).url.path == "/sign-in"
    assert (await laptop.go("/account")).url.path == "/account"
    # The service heard of the phone's session ending, and what it issued there stops working.
    await eventually(lambda: _received(receiver, 1), what="a back-channel logout")
    assert len(receiver.posts) == 1
    assert not await active(rp, on_phone["access_token"]) and not await active(rp, on_phone["refresh_token"])
    assert await active(rp, on_laptop["access_token"]) and await active(rp, on_laptop["refresh_token"])
    assert not await refreshes(rp, on_phone)
    assert await refreshes(rp, on_laptop)


async def test_signing_out_everywhere(hub: Hub, rp: RelyingParty, receiver: Receiver, two_browsers: tuple[Browser, Browser]) -> None:  # noqa: F811
    laptop, phone = two_browsers
    on_phone, _ = await sign_in_through(rp, phone, scope="openid offline_access")
    on_laptop, _ = await sign_in_through(rp, laptop, scope="openid offline_access")
    page = await laptop.go("/account")
    done = await laptop.submit(page, "/account/sessions/end-all")
    assert "You are signed out everywhere" in done.text
    assert (await phone.go("/account")).url.path == "/sign-in"
    assert (await laptop.go("/account")).url.path == "/sign-in"
    await eventually(lambda: _received(receiver, 2), what="two back-channel logouts")
    assert len(receiver.posts) == 2
    assert {p["form"]["logout_token"].count(".") for p in receiver.posts} == {2}
    for token in (on_phone, on_laptop):
        assert not await active(rp, token["access_token"]) and not await active(rp, token["refresh_token"])
    assert not await refreshes(rp, on_phone)
    assert not await refreshes(rp, on_laptop)


async def test_another_persons_session_cannot_be_ended(hub: Hub, two_browsers: tuple[Browser, Browser]) -> None:
    laptop, _ = two_browsers
    await hub.add_user(email="bob@example.com", verified=True)
    bob = Browser(hub)
    try:
        await bob.sign_in("bob@example.com")
        page = await laptop.go("/account")
        laptop_sid = next(f for f in _forms(page.text, "/account/sessions/end") if "this browser" in f[1])[0]["session"]
        bob_page = await bob.go("/account")
        fields = form(bob_page.text, "/account/sessions/end").fields | {"session": laptop_sid}
        await bob.go("/account/sessions/end", method="POST", data=fields)
        assert (await laptop.go("/account")).url.path == "/account"
    finally:
        await bob.aclose()


async def _received(receiver: Receiver, count: int) -> bool:  # noqa: F811
    return len(receiver.posts) >= count


def _forms(page: str, action: str) -> list[tuple[dict[str, str], str]]:
    """Each form posting to ``action`` with the list item's text before it."""
    found = []
    for item in page.split("<li>")[1:]:
        if f'action="{action}"' in item:
            found.append((form(item, action).fields, item))
    return found

