"""The second factor's limits hold across console sessions and against parallel submissions:
wrong codes are counted atomically before a code is checked, per session (five end it) and per
staff member (five in a row lock the codes out, with a doubling back-off); a right code resets."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from httpx2 import Response
from sqlalchemy import select, update

from identity.appkeys import DB
from identity.db.models import AuditRecord, ConsoleSession, StaffMember, utcnow
from tests.support import Browser, Hub, form
from tests.support_console.signing_in import add_staff, password_step, totp_step

WRONG = "000000"


async def _staff(hub: Hub) -> StaffMember:
    async with hub.app[DB]() as db:
        return (await db.scalars(select(StaffMember))).one()


async def _records(hub: Hub, sub: str, *actions: str) -> list[AuditRecord]:
    async with hub.app[DB]() as db:
        query = select(AuditRecord).where(AuditRecord.actor == sub, AuditRecord.action.in_(actions)).order_by(AuditRecord.id)
        return list((await db.scalars(query)).all())


def _wrong_code(totp: object) -> str:
    code = WRONG
    now = dt.datetime.now(dt.UTC)
    spent = {totp.at(now + dt.timedelta(seconds=30 * i)) for i in (-1, 0, 1)}  # type: ignore[attr-defined]
    while code in spent:
        code = f"{(int(code) + 1) % 1_000_000:06d}"
    return code


async def test_wrong_codes_count_across_sessions_and_lock_the_staff_member_out(hub: Hub) -> None:
    sub, totp = await add_staff(hub)
    wrong = _wrong_code(totp)
    # Five wrong codes spread over three sign-ins (none of which reaches its own limit of five).
    for tries in (2, 2, 1):
        browser = Browser(hub)
        page = await password_step(browser)
        for _ in range(tries):
            answer = await totp_step(browser, page, wrong)
            if answer.status_code == 400:
                page = answer
        await browser.aclose()
    assert answer.status_code == 403 and "locked" in answer.text
    member = await _staff(hub)
    assert member.totp_failures == 5 and member.totp_locked_until is not None
    lock = member.totp_locked_until - utcnow()
    assert dt.timedelta(minutes=14) < lock <= dt.timedelta(minutes=15)

    # Locked: a new sign-in's right code is refused, and not checked.
    browser = Browser(hub)
    page = await password_step(browser)
    refused = await totp_step(browser, page, totp.now())
    assert refused.status_code == 403 and "locked" in refused.text
    assert (await browser.http.get("/support/totp")).headers["location"] == "/support/login"
    await browser.aclose()
    assert (await _staff(hub)).totp_last_step is None

    failed = await _records(hub, sub, "console.totp_failed")
    locked = await _records(hub, sub, "console.totp_locked")
    assert [r.detail["failures"] for r in failed] == [1, 2, 3, 4, 5]  # type: ignore[index]
    assert len(locked) == 2 and {r.actor_kind for r in failed + locked} == {"agent"}
    stored = json.dumps([[r.reason, r.detail] for r in failed + locked])
    assert wrong not in stored and totp.now() not in stored

    # When the lock runs out, one more wrong code locks again for twice as long...
    async with hub.app[DB].begin() as db:
        await db.execute(update(StaffMember).values(totp_locked_until=utcnow() - dt.timedelta(seconds=1)))
    browser = Browser(hub)
    page = await password_step(browser)
    again = await totp_step(browser, page, wrong)
    assert again.status_code == 403
    await browser.aclose()
    member = await _staff(hub)
    assert member.totp_failures == 6 and member.totp_locked_until is not None
    assert dt.timedelta(minutes=29) < member.totp_locked_until - utcnow() <= dt.timedelta(minutes=30)

    # ...and after it, a right code signs in and resets the count.
    async with hub.app[DB].begin() as db:
        await db.execute(update(StaffMember).values(totp_locked_until=utcnow() - dt.timedelta(seconds=1)))
    browser = Browser(hub)
    page = await password_step(browser)
    done = await totp_step(browser, page, totp.now())
    assert done.status_code == 303 and done.headers["location"] == "/support/"
    await browser.aclose()
    member = await _staff(hub)
    assert member.totp_failures == 0 and member.totp_locked_until is None


async def test_a_right_code_resets_the_count(hub: Hub) -> None:
    _, totp = await add_staff(hub)
    wrong = _wrong_code(totp)
    browser = Browser(hub)
    page = await password_step(browser)
    for _ in range(4):
        page = await totp_step(browser, page, wrong)
        assert page.status_code == 400
    assert (await _staff(hub)).totp_failures == 4
    done = await totp_step(browser, page, totp.now())
    assert done.status_code == 303
    await browser.aclose()
    assert (await _staff(hub)).totp_failures == 0


async def _fire(browser: Browser, fields: dict[str, str], code: str, count: int) -> list[Response]:
    return list(await asyncio.gather(*(browser.http.post("/support/totp", data=fields | {"code": code}) for _ in range(count))))


async def test_parallel_wrong_codes_get_no_more_than_five_tries(hub: Hub) -> None:
    sub, totp = await add_staff(hub)
    wrong = _wrong_code(totp)
    browser = Browser(hub)
    page = await password_step(browser)
    fields = form(page.text, "/support/totp").fields
    answers = await _fire(browser, fields, wrong, 20)
    # Refused outright (403), or sent to sign in again once the attempt has ended (303).
    assert all(a.status_code in (400, 403) or a.headers.get("location") == "/support/login" for a in answers), answers
    assert sum(a.status_code == 400 for a in answers) <= 4
    async with hub.app[DB]() as db:
        row = (await db.scalars(select(ConsoleSession))).one()
    assert row.totp_failures == 5 and row.ended_at is not None
    assert len(await _records(hub, sub, "console.totp_failed")) == 5
    await browser.aclose()


async def test_parallel_sessions_get_no_more_than_five_tries_in_all(hub: Hub) -> None:
    sub, totp = await add_staff(hub)
    wrong = _wrong_code(totp)
    browsers = [Browser(hub) for _ in range(3)]
    pages = [await password_step(b) for b in browsers]
    batches = [_fire(b, form(p.text, "/support/totp").fields, wrong, 4) for b, p in zip(browsers, pages, strict=True)]
    answers = [a for batch in await asyncio.gather(*batches) for a in batch]
    # Refused outright (403), or sent to sign in again once the attempt has ended (303).
    assert all(a.status_code in (400, 403) or a.headers.get("location") == "/support/login" for a in answers), answers
    assert len(await _records(hub, sub, "console.totp_failed")) == 5
    assert (await _staff(hub)).totp_failures == 5
    for b in browsers:
        await b.aclose()
