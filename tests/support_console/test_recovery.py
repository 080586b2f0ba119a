"""Helping a locked-out person without seeing a secret: an agent mails a password-reset link
(the agent never sees it), and asks for the second factor (authenticator app and passkeys) to be
removed, which only a different supervisor can approve. Everything is audited and mailed."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from identity.accounts.second_factor import seal_totp
from identity.appkeys import CIPHER, DB
from identity.db.models import Passkey, SecondFactor, SecondFactorRemoval, utcnow
from identity.mail import read_outbox
from identity.web import csrf
from tests.support import Hub, form
from tests.support_console.console import Console, audit_records, console_for, linked_person
from tests.support_console.signing_in import account_id

PAGE = "/support/second-factor-removals"


def _mails(hub: Hub, to: str) -> list[tuple[str, str]]:
    return [(str(m["Subject"]), m.get_content()) for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == to]


async def _give_factors(hub: Hub, sub: str) -> int:
    account = await account_id(hub, sub)
    now = utcnow()
    async with hub.app[DB].begin() as db:
        db.add(SecondFactor(account_id=account, totp_secret=seal_totp(hub.app[CIPHER], "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU", account), recovery_codes=[], created_at=now, confirmed_at=now))
        db.add(Passkey(account_id=account, credential_id=f"id-{sub}", user_handle="aGFuZGxl", public_key="cGs", sign_count=0, transports=[], name="Phone", created_at=now))
    return account


async def _factors(hub: Hub, account: int) -> tuple[int, int]:
    async with hub.app[DB]() as db:
        app = len((await db.scalars(select(SecondFactor.id).where(SecondFactor.account_id == account))).all())
        keys = len((await db.scalars(select(Passkey.id).where(Passkey.account_id == account))).all())
    return app, keys


async def _request_id(hub: Hub, account: int) -> int:
    async with hub.app[DB]() as db:
        found = await db.scalar(select(SecondFactorRemoval.id).where(SecondFactorRemoval.account_id == account).order_by(SecondFactorRemoval.id.desc()))
    assert found is not None
    return found


async def _ask_removal(console: Console, sub: str, reason: str = "Lost the phone with the authenticator") -> str:
    path = f"/support/people/{sub}"
    page = await console.get(path)
    done = await console.submit(page, f"{path}/second-factor-removal", reason=reason)
    assert done.status_code == 200, done.text[:300]
    return done.text


async def test_an_agent_mails_a_reset_link_the_agent_never_sees(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    path = f"/support/people/{person.sub}"
    try:
        page = await console.get(path)
        no_reason = await console.submit(page, f"{path}/password-reset", reason=" ")
        done = await console.submit(page, f"{path}/password-reset", reason="Caller cannot remember the password")
    finally:
        await console.aclose()
    assert "Give a reason" in no_reason.text
    assert done.status_code == 200 and "A password reset link was mailed" in done.text
    (mail,) = _mails(hub, "ann@example.com")
    subject, text = mail
    assert subject == "Customer support sent you a password reset link" and "did not ask customer support" in text
    token = re.search(r"/reset-password/confirm\?token=([\w-]+)", text)
    assert token is not None and token.group(1) not in done.text
    (record,) = await audit_records(hub, account_sub=person.sub, action="support.password_reset_sent")
    assert (record.actor, record.reason, record.detail) == (console.sub, "Caller cannot remember the password", {"outcome": "sent"})
    assert token.group(1) not in str(record.detail)
    # The same link as "forgot password": it opens the page that sets a new password.
    try:
        opened = await person.browser.go(f"/reset-password/confirm?token={token.group(1)}")
    finally:
        await person.browser.aclose()
    assert opened.status_code == 200 and 'name="password"' in opened.text


async def test_a_removal_waits_for_a_supervisor_and_only_then_removes_the_factor(hub: Hub) -> None:
    person = await linked_person(hub)
    await person.browser.aclose()
    account = await _give_factors(hub, person.sub)
    agent = await console_for(hub)
    supervisor = await console_for(hub, "supervisor")
    try:
        asked = await _ask_removal(agent, person.sub)
        assert "a supervisor approves or refuses it" in asked and "waiting for a supervisor" in asked
        page = await agent.get(f"/support/people/{person.sub}")
        token = form(page.text, f"/support/people/{person.sub}/reveal").fields[csrf.FIELD]
        again = await agent.http.post(f"/support/people/{person.sub}/second-factor-removal", data={csrf.FIELD: token, "reason": "Asking a second time"})
        assert again.status_code == 303 and "removal_pending" in again.headers["location"]
        assert await _factors(hub, account) == (1, 1)
        request = await _request_id(hub, account)
        # An agent neither sees the waiting requests nor decides one, even with its own console token.
        assert (await agent.get(PAGE)).status_code == 403
        forced = await agent.http.post(f"{PAGE}/{request}/approve", data={csrf.FIELD: token})
        assert forced.status_code == 403
        # A supervisor's form without its token opens nothing.
        assert (await supervisor.http.post(f"{PAGE}/{request}/approve", data={})).status_code == 403
        assert await _factors(hub, account) == (1, 1)
        listing = await supervisor.get(PAGE)
        assert listing.status_code == 200 and "ann@example.com" in listing.text and "Lost the phone" in listing.text
        assert "<td>agent@example.com</td>" in listing.text  # who asked
        approved = await supervisor.submit(listing, f"{PAGE}/{request}/approve")
        assert approved.status_code == 200 and "the second factor is removed" in approved.text
        twice = await supervisor.http.post(f"{PAGE}/{request}/approve", data={csrf.FIELD: form(listing.text, f"{PAGE}/{request}/approve").fields[csrf.FIELD]})
        assert twice.status_code == 303 and "not_pending" in twice.headers["location"]
    finally:
        await agent.aclose()
        await supervisor.aclose()
    assert await _factors(hub, account) == (0, 0)
    subjects = [s for s, _ in _mails(hub, "ann@example.com")]
    assert subjects == ["Customer support asked to remove your second factor", "Your second factor was removed"]
    assert all("did not ask customer support" in t for _, t in _mails(hub, "ann@example.com"))
    (asked_record,) = await audit_records(hub, account_sub=person.sub, action="support.second_factor_removal_requested")
    assert (asked_record.actor, asked_record.reason) == (agent.sub, "Lost the phone with the authenticator")
    (removed,) = await audit_records(hub, account_sub=person.sub, action="support.second_factor_removed")
    assert removed.actor == supervisor.sub and removed.reason == "Lost the phone with the authenticator"
    assert removed.detail == {"request": request, "requested_by": agent.sub, "outcome": "removed", "authenticator_app": True, "passkeys": 1}


async def test_a_refused_removal_removes_nothing(hub: Hub) -> None:
    person = await linked_person(hub)
    await person.browser.aclose()
    account = await _give_factors(hub, person.sub)
    agent = await console_for(hub)
    supervisor = await console_for(hub, "supervisor")
    try:
        await _ask_removal(agent, person.sub, "Caller could not answer the checks")
        request = await _request_id(hub, account)
        refused = await supervisor.submit(await supervisor.get(PAGE), f"{PAGE}/{request}/refuse")
    finally:
        await agent.aclose()
        await supervisor.aclose()
    assert "Refused: nothing was removed" in refused.text
    assert await _factors(hub, account) == (1, 1)
    (record,) = await audit_records(hub, account_sub=person.sub, action="support.second_factor_removal_refused")
    assert record.actor == supervisor.sub and record.detail["outcome"] == "refused"  # type: ignore[index]
    assert [s for s, _ in _mails(hub, "ann@example.com")] == ["Customer support asked to remove your second factor"]


async def test_nobody_approves_their_own_request_or_a_removal_from_their_own_account(hub: Hub) -> None:
    first = await console_for(hub, "supervisor", "first@example.com")
    second = await console_for(hub, "supervisor", "second@example.com")
    third = await console_for(hub, "supervisor", "third@example.com")
    person = await linked_person(hub)
    await person.browser.aclose()
    account = await _give_factors(hub, person.sub)
    second_account = await _give_factors(hub, second.sub)
    try:
        await _ask_removal(first, person.sub, "Caller lost both devices")
        await _ask_removal(first, second.sub, "Colleague lost the phone")
        assert "Another supervisor decides" in (await first.get(PAGE)).text
        own_request = await _request_id(hub, account)
        for_second = await _request_id(hub, second_account)
        listing = (await second.get(PAGE)).text
        own_account = await second.http.post(f"{PAGE}/{for_second}/approve", data={csrf.FIELD: form(listing, f"{PAGE}/{own_request}/approve").fields[csrf.FIELD]})
        assert own_account.status_code == 303 and "own_account" in own_account.headers["location"]
        first_listing = (await first.get(f"/support/people/{person.sub}")).text
        first_token = form(first_listing, f"/support/people/{person.sub}/reveal").fields[csrf.FIELD]
        mine = await first.http.post(f"{PAGE}/{own_request}/approve", data={csrf.FIELD: first_token})
        assert mine.status_code == 303 and "own_request" in mine.headers["location"]
        assert await _factors(hub, account) == (1, 1) and await _factors(hub, second_account) == (1, 1)
        # Another supervisor decides each one.
        approved = await second.submit(await second.get(PAGE), f"{PAGE}/{own_request}/approve")
        assert "the second factor is removed" in approved.text
        assert "the second factor is removed" in (await third.submit(await third.get(PAGE), f"{PAGE}/{for_second}/approve")).text
    finally:
        for c in (first, second, third):
            await c.aclose()
    assert await _factors(hub, account) == (0, 0) and await _factors(hub, second_account) == (0, 0)


async def test_a_person_without_a_second_factor_has_nothing_to_remove(hub: Hub) -> None:
    person = await linked_person(hub)
    await person.browser.aclose()
    agent = await console_for(hub)
    try:
        page = await agent.get(f"/support/people/{person.sub}")
        assert "The person has no second factor" in page.text
        refused = await agent.http.post(
            f"/support/people/{person.sub}/second-factor-removal",
            data={csrf.FIELD: form(page.text, f"/support/people/{person.sub}/reveal").fields[csrf.FIELD], "reason": "Lost the phone somewhere"},
        )
    finally:
        await agent.aclose()
    assert refused.status_code == 303 and "no_factor" in refused.headers["location"]
    assert await audit_records(hub, account_sub=person.sub, action="support.second_factor_removal_requested") == []



async def test_the_database_holds_one_pending_removal_per_person(hub: Hub) -> None:
    """Two agents asking at the same moment both pass the check for a pending request; the
    database keeps the second out (and decided requests do not count)."""
    sub = await hub.add_user()
    person = await account_id(hub, sub)

    def removal(status: str) -> SecondFactorRemoval:
        return SecondFactorRemoval(account_id=person, status=status, reason="Lost the phone", requested_by="agent", requested_at=utcnow())

    async with hub.app[DB].begin() as db:
        db.add_all([removal("refused"), removal("approved"), removal("pending")])
    with pytest.raises(IntegrityError):
        async with hub.app[DB].begin() as db:
            db.add(removal("pending"))
    async with hub.app[DB]() as db:
        assert sorted(await db.scalars(select(SecondFactorRemoval.status))) == ["approved", "pending", "refused"]
