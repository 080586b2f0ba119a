"""A password sign-in from a browser that never signed in to the account before is mailed to the
person (when, which browser, what to do if it was not them); the account's first sign-in and
browsers it knows are not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from identity.accounts.new_browser import SUBJECT
from identity.mail import read_outbox
from tests.support import Browser, Hub

FIREFOX_ON_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
CHROME_ON_ANDROID = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36"


def told(hub: Hub) -> list[str]:
    return [m.get_content() for m in read_outbox(hub.settings.data_dir / "mail") if m["Subject"] == SUBJECT and m["To"] == "ann@example.com"]


@pytest.fixture
async def browsers(hub: Hub) -> AsyncIterator[list[Browser]]:
    made = [Browser(hub), Browser(hub)]
    made[0].http.headers["User-Agent"] = CHROME_ON_ANDROID
    made[1].http.headers["User-Agent"] = FIREFOX_ON_WINDOWS
    yield made
    for b in made:
        await b.aclose()


async def test_a_new_browser_is_told_and_a_known_one_is_not(hub: Hub, browsers: list[Browser]) -> None:
    await hub.add_user()
    phone, laptop = browsers
    assert (await phone.sign_in()).status_code == 200
    assert told(hub) == []  # the account's first sign-in: nothing to compare with
    phone.http.cookies.delete("osi_session")
    assert (await phone.sign_in()).status_code == 200
    assert told(hub) == []  # a browser that signed in before

    assert (await laptop.sign_in()).status_code == 200
    [mail] = told(hub)
    assert "Firefox on Windows" in mail
    assert f"{hub.url}/account/password" in mail and f"{hub.url}/account/two-step" in mail

    laptop.http.cookies.delete("osi_session")
    assert (await laptop.sign_in()).status_code == 200
    assert len(told(hub)) == 1  # known now


async def test_a_wrong_password_from_a_new_browser_tells_nothing(hub: Hub, browsers: list[Browser]) -> None:
    await hub.add_user()
    phone, laptop = browsers
    await phone.sign_in()
    assert (await laptop.sign_in(password="not the password at all")).status_code in (400, 401, 429)
    assert told(hub) == []
