"""Every password check and every request that makes the hub hash a password or send mail is
counted before the work is done: per typed address, per client address (IPv6 by its /64), per
known browser; waits grow with each attempt past the limit; the queue of hashes is bounded."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import threading

import httpx2
import pytest
from sqlalchemy import func, select, update

from identity.accounts import throttle
from identity.accounts.hashing import HashQueue
from identity.appkeys import DB, HASHING
from identity.db.models import Account, BrowserSession, Throttle, utcnow
from identity.mail import read_outbox
from tests.support import PASSWORD, Browser, Hub, form

WRONG = "The email address or password is incorrect."
REFUSED = "Too many failed attempts. Try again in"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {
        "throttle_account_failures": 3,
        "throttle_address_failures": 10,
        "throttle_base_lockout": 60,
        "throttle_max_lockout": 3600,
        "trusted_proxies": ["127.0.0.1"],
        "throttle_requests_per_address": 3,
        "throttle_requests_per_email": 2,
        "mail_per_recipient": 2,
    }


@pytest.fixture
async def ann(hub: Hub) -> str:
    return await hub.add_user(verified=True)


class From(Browser):
    """A browser behind the trusted proxy, seen from ``address``."""

    def __init__(self, hub: Hub, address: str) -> None:
        super().__init__(hub)
        self.http.headers["X-Forwarded-For"] = address


async def post_sign_in(browser: Browser, email: str, password: str) -> httpx2.Response:
    page = await browser.go("/sign-in")
    return await browser.http.post("/sign-in", data=form(page.text, "/sign-in").fields | {"email": email, "password": password})


def wait_of(response: httpx2.Response) -> int:
    found = re.search(r"[Tt]ry again in (\d+) seconds", response.text)
    assert found, response.text[:1000]
    return int(found.group(1))


# The client address ------------------------------------------------------------------------------


async def test_parallel_guesses_from_one_address_cannot_outrun_its_limit(hub: Hub, ann: str) -> None:
    """Sixty wrong guesses at once from one address, each at another account: no more
    passwords are checked than the address's limit of 10."""
    browsers = [From(hub, "198.51.100.7") for _ in range(60)]
    try:
        pages = [await b.go("/sign-in") for b in browsers]
        answers = await asyncio.gather(
            *(
                b.http.post("/sign-in", data=form(p.text, "/sign-in").fields | {"email": f"p{i}@example.com", "password": "wrong guess here"})
                for i, (b, p) in enumerate(zip(browsers, pages))
            )
        )
        checked = [a for a in answers if WRONG in a.text]
        refused = [a for a in answers if a.status_code == 429 and WRONG not in a.text]
        assert len(checked) <= hub.settings.throttle_address_failures
        assert len(checked) + len(refused) == 60
        # Ann's right password from there waits too; from another address it works.
        assert (await post_sign_in(browsers[0], "ann@example.com", PASSWORD)).status_code == 429
        elsewhere = From(hub, "198.51.100.8")
        try:
            assert (await post_sign_in(elsewhere, "ann@example.com", PASSWORD)).status_code == 303
        finally:
            await elsewhere.aclose()
    finally:
        for b in browsers:
            await b.aclose()


async def test_ipv6_addresses_count_by_their_64(hub: Hub, ann: str) -> None:
    for i in range(10):
        stranger = From(hub, f"2001:db8:1:2::{i + 1:x}")
        try:
            answer = await post_sign_in(stranger, f"p{i}@example.com", "wrong guess here")
            assert WRONG in answer.text
        finally:
            await stranger.aclose()
    same_64, other_64 = From(hub, "2001:db8:1:2:ffff::1"), From(hub, "2001:db8:1:3::1")
    try:
        assert (await post_sign_in(same_64, "ann@example.com", PASSWORD)).status_code == 429
        assert (await post_sign_in(other_64, "ann@example.com", PASSWORD)).status_code == 303
    finally:
        await same_64.aclose()
        await other_64.aclose()


def test_address_keys() -> None:
    assert throttle.address_key("a", "2001:db8:1:2::1") == throttle.address_key("a", "2001:db8:1:2:abcd:1:2:3")
    assert throttle.address_key("a", "2001:db8:1:2::1") != throttle.address_key("a", "2001:db8:1:3::1")
    assert throttle.address_key("a", "::ffff:198.51.100.7") == throttle.address_key("a", "198.51.100.7")
    assert throttle.address_key("a", "198.51.100.7") != throttle.address_key("a", "198.51.100.8")


# A browser that signed in before ---------------------------------------------------------------


async def test_a_stranger_guessing_does_not_lock_out_the_browser_the_owner_uses(hub: Hub, ann: str) -> None:
    owner = From(hub, "203.0.113.10")
    attacker = From(hub, "203.0.113.66")
    newcomer = From(hub, "203.0.113.11")
    try:
        assert (await post_sign_in(owner, "ann@example.com", PASSWORD)).status_code == 303
        assert "osi_device" in owner.http.cookies
        await owner.http.post("/sign-out", data=form((await owner.go("/account")).text, "/sign-out").fields)
        for _ in range(3):
            assert WRONG in (await post_sign_in(attacker, "ann@example.com", "guessing away")).text
        locked = await post_sign_in(attacker, "ann@example.com", PASSWORD)
        assert locked.status_code == 429 and REFUSED in locked.text
        # A browser never signed in to Ann waits like the attacker ...
        assert (await post_sign_in(newcomer, "ann@example.com", PASSWORD)).status_code == 429
        # ... but the one Ann uses does not.
        back = await post_sign_in(owner, "ann@example.com", PASSWORD)
        assert back.status_code == 303 and back.headers["location"] == "/account"
    finally:
        for b in (owner, attacker, newcomer):
            await b.aclose()


async def test_a_known_browser_has_its_own_limit(hub: Hub, ann: str) -> None:
    owner = From(hub, "203.0.113.10")
    try:
        assert (await post_sign_in(owner, "ann@example.com", PASSWORD)).status_code == 303
        owner.http.cookies.delete("osi_session")
        answers = [await post_sign_in(owner, "ann@example.com", "a wrong one") for _ in range(3)]
        assert [a.status_code for a in answers] == [400, 400, 429]
        assert (await post_sign_in(owner, "ann@example.com", PASSWORD)).status_code == 429
        # Its guesses counted against it alone: a stranger with the right password gets in.
        stranger = From(hub, "203.0.113.12")
        try:
            assert (await post_sign_in(stranger, "ann@example.com", PASSWORD)).status_code == 303
        finally:
            await stranger.aclose()
    finally:
        await owner.aclose()


async def test_a_device_cookie_for_another_account_or_forged_counts_for_nothing(hub: Hub, ann: str) -> None:
    await hub.add_user("bob@example.com", given_name="Bob", verified=True)
    bob = From(hub, "203.0.113.20")
    try:
        assert (await post_sign_in(bob, "bob@example.com", PASSWORD)).status_code == 303
        bob.http.cookies.delete("osi_session")
        forged = From(hub, "203.0.113.21")
        forged.http.cookies.set("osi_device", "aaaaaaaaaaaaaaaaaaaaaaaa.0123456789abcdef0123456789abcdef", domain="127.0.0.1", path="/")
        try:
            for browser in (bob, forged):
                assert WRONG in (await post_sign_in(browser, "ann@example.com", "guess")).text
            assert WRONG in (await post_sign_in(bob, "ann@example.com", "guess")).text
            assert (await post_sign_in(forged, "ann@example.com", PASSWORD)).status_code == 429
        finally:
            await forged.aclose()
    finally:
        await bob.aclose()


# Waits grow ------------------------------------------------------------------------------------


async def test_each_attempt_past_the_limit_waits_twice_as_long(hub: Hub, ann: str) -> None:
    stranger = From(hub, "203.0.113.30")
    key = throttle.email_key("account", "ann@example.com")

    async def wait_runs_out() -> None:
        async with hub.app[DB].begin() as db:
            await db.execute(update(Throttle).where(Throttle.key == key).values(locked_until=utcnow() - dt.timedelta(seconds=1)))

    try:
        answers = [await post_sign_in(stranger, "ann@example.com", "guess") for _ in range(3)]
        assert [a.status_code for a in answers] == [400, 400, 429]
        waits = [wait_of(answers[-1])]
        for _ in range(3):
            await wait_runs_out()
            answer = await post_sign_in(stranger, "ann@example.com", "guess")
            assert WRONG in answer.text and answer.status_code == 429
            waits.append(wait_of(answer))
        assert [round(w / 60) for w in waits] == [1, 2, 4, 8]
        # The right password, once the wait is over, clears the streak.
        await wait_runs_out()
        assert (await post_sign_in(stranger, "ann@example.com", PASSWORD)).status_code == 303
        async with hub.app[DB]() as db:
            assert await db.get(Throttle, key) is None
    finally:
        await stranger.aclose()


# Confirming a password -------------------------------------------------------------------------


async def test_retyped_passwords_are_throttled_and_end_the_session(hub: Hub, ann: str) -> None:
    person = From(hub, "203.0.113.40")
    try:
        assert (await post_sign_in(person, "ann@example.com", PASSWORD)).status_code == 303
        targets = [
            ("/account/password", {"current_password": "guess one", "password": "a brand new passphrase"}),
            ("/account/delete", {"current_password": "guess two"}),
            ("/account/rights", {"type": "access", "target": "hub", "current_password": "guess three"}),
        ]
        answers = []
        for path, data in targets:
            page = await person.go(path)
            answers.append(await person.http.post(path, data=form(page.text, path).fields | data))
        assert [a.status_code for a in answers] == [400, 400, 429]
        assert "signed out" in answers[-1].text
        assert (await person.http.get("/account")).status_code == 302
        async with hub.app[DB]() as db:
            live = await db.scalar(select(func.count()).select_from(BrowserSession).where(BrowserSession.ended_at.is_(None)))
            account = await db.scalar(select(Account).where(Account.email == "ann@example.com"))
        assert live == 0 and account is not None
        # Signing in again from that browser waits, as after three wrong passwords at the sign-in page.
        assert (await post_sign_in(person, "ann@example.com", PASSWORD)).status_code == 429
    finally:
        await person.aclose()


async def test_the_email_change_confirmation_counts_too(hub: Hub, ann: str) -> None:
    person = From(hub, "203.0.113.42")
    try:
        assert (await post_sign_in(person, "ann@example.com", PASSWORD)).status_code == 303
        statuses = []
        for i in range(3):
            page = await person.go("/account")
            fields = form(page.text, "/account/details").fields
            answer = await person.http.post(
                "/account/details", data=fields | {"email": f"new{i}@example.com", "current_password": "not it"}
            )
            statuses.append(answer.status_code)
        assert statuses == [400, 400, 429]
        assert (await person.http.get("/account")).status_code == 302
    finally:
        await person.aclose()


# Registration, resets, mail --------------------------------------------------------------------


async def register(browser: Browser, email: str) -> httpx2.Response:
    page = await browser.go("/register")
    fields = form(page.text, "/register").fields | {
        "email": email,
        "password": "a long enough passphrase",
        "given_name": "Reg",
        "family_name": "Istrant",
        "birthdate": "1990-01-01",
    }
    return await browser.http.post("/register", data=fields)


async def accounts(hub: Hub) -> int:
    async with hub.app[DB]() as db:
        return int(await db.scalar(select(func.count()).select_from(Account)) or 0)


async def test_registrations_from_one_address_are_limited_before_any_hashing(hub: Hub) -> None:
    flood = From(hub, "198.51.100.50")
    try:
        answers = [await register(flood, f"r{i}@example.com") for i in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
        assert "Too many requests from here. Try again in" in answers[-1].text
        assert await accounts(hub) == 3
    finally:
        await flood.aclose()
    elsewhere = From(hub, "198.51.100.51")
    try:
        assert (await register(elsewhere, "r9@example.com")).status_code == 200
    finally:
        await elsewhere.aclose()


async def test_one_typed_address_is_limited_from_anywhere(hub: Hub) -> None:
    statuses = []
    for i in range(3):
        browser = From(hub, f"198.51.100.{60 + i}")
        try:
            statuses.append((await register(browser, "same@example.com")).status_code)
        finally:
            await browser.aclose()
    assert statuses == [200, 200, 429]


async def reset(browser: Browser, email: str) -> httpx2.Response:
    page = await browser.go("/reset-password")
    return await browser.http.post("/reset-password", data=form(page.text, "/reset-password").fields | {"email": email})


async def test_requests_for_one_typed_address_are_limited(hub: Hub, ann: str) -> None:
    answers = []
    for i, email in enumerate(["ann@example.com", "ann@example.com", "ann@example.com", "nobody@example.com"]):
        browser = From(hub, f"198.51.100.{70 + i}")
        try:
            answers.append(await reset(browser, email))
        finally:
            await browser.aclose()
    # The same answers whether or not the address has an account.
    assert [a.status_code for a in answers] == [200, 200, 429, 200]


@pytest.mark.parametrize("settings_overrides", [{"trusted_proxies": ["127.0.0.1"], "mail_per_recipient": 2}])
async def test_mail_to_one_recipient_is_limited_and_the_page_answers_the_same(hub: Hub, ann: str) -> None:
    answers = []
    for i in range(4):
        browser = From(hub, f"198.51.100.{70 + i}")
        try:
            answers.append(await reset(browser, "ann@example.com"))
        finally:
            await browser.aclose()
    assert [a.status_code for a in answers] == [200] * 4
    assert all("Check your email" in a.text for a in answers)
    mailed = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "ann@example.com" and "Reset" in m["Subject"]]
    assert len(mailed) == 2


async def queued(queue: HashQueue, count: int) -> None:
    async with asyncio.timeout(60):
        while queue.waiting < count:
            await asyncio.sleep(0.005)


async def test_a_full_hash_queue_answers_503_and_keeps_room_for_sign_ins(hub: Hub, ann: str) -> None:
    queue = hub.app[HASHING]
    queue.limit = 2  # new hashes may fill one place, sign-ins two
    gate = threading.Event()
    blockers = [queue.pool.submit(gate.wait) for _ in range(os.cpu_count() or 1)]
    first, second, person = From(hub, "198.51.100.80"), From(hub, "198.51.100.81"), From(hub, "198.51.100.82")
    try:
        waiting = asyncio.ensure_future(register(first, "q1@example.com"))
        await queued(queue, 1)  # the first registration's hash waits behind the blockers
        busy = await register(second, "q2@example.com")
        assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
        signing_in = asyncio.ensure_future(post_sign_in(person, "ann@example.com", PASSWORD))
        await queued(queue, 2)
        gate.set()
        assert (await waiting).status_code == 200
        assert (await signing_in).status_code == 303
    finally:
        gate.set()
        for b in blockers:
            b.result()
        for b in (first, second, person):
            await b.aclose()
    assert await accounts(hub) == 2
