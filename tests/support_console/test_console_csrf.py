"""Console forms carry a CSRF token bound to the console session: a token from the rest of the
hub, planted through the shared ``osi_csrf`` cookie, or from another console session opens
nothing. Malformed input gets a 4xx, never a 500."""

from __future__ import annotations

from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import ConsoleSession
from identity.web import csrf
from tests.support import SQLITE_ALONE, Browser, Hub, form
from tests.support_console.console import audit_records, console_for, linked_person
from tests.support_console.signing_in import add_staff, password_step, totp_step

pytestmark = SQLITE_ALONE


async def _hub_pair(hub: Hub) -> tuple[str, str]:
    """A valid (osi_csrf cookie, token) pair, as anyone can get one from a hub page."""
    stranger = Browser(hub)
    page = await stranger.go("/sign-in")
    pair = stranger.http.cookies.get(csrf.COOKIE), form(page.text, "/sign-in").fields[csrf.FIELD]
    await stranger.aclose()
    assert pair[0] and pair[1]
    return pair  # type: ignore[return-value]


async def test_a_token_planted_through_the_hub_cookie_does_not_work_in_the_console(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    nonce, token = await _hub_pair(hub)
    try:
        # The attacker's own pair, tossed into the agent's browser (the cookie is shared with the hub).
        console.http.cookies.set(csrf.COOKIE, nonce, domain="127.0.0.1", path="/")
        planted = await console.http.post(
            f"/support/people/{person.sub}/reveal", data={csrf.FIELD: token, "field": "phone_number", "reason": "attacker wants it"}
        )
        assert planted.status_code == 403
        # The console's own form works, whatever the hub cookie says.
        page = await console.get(f"/support/people/{person.sub}")
        assert token not in page.text
        shown = await console.submit(page, f"/support/people/{person.sub}/reveal", field="phone_number", reason="caller asked to confirm it")
        assert shown.status_code == 200 and "+447700900456" in shown.text
    finally:
        await console.aclose()
        await person.browser.aclose()
    assert [r.reason for r in await audit_records(hub, action="support.reveal")] == ["caller asked to confirm it"]


async def test_a_token_from_another_console_session_does_not_work(hub: Hub) -> None:
    person = await linked_person(hub)
    first, second = await console_for(hub), await console_for(hub, email="other@example.com")
    try:
        page = await first.get(f"/support/people/{person.sub}")
        token = form(page.text, f"/support/people/{person.sub}/reveal").fields[csrf.FIELD]
        stolen = await second.http.post(f"/support/people/{person.sub}/reveal", data={csrf.FIELD: token, "field": "birthdate", "reason": "no reason at all"})
        assert stolen.status_code == 403
    finally:
        await first.aclose()
        await second.aclose()
        await person.browser.aclose()


async def test_the_code_form_is_bound_to_its_sign_in(hub: Hub) -> None:
    _, totp = await add_staff(hub)
    mine, theirs = Browser(hub), Browser(hub)
    try:
        page = await password_step(mine)
        other_page = await password_step(theirs)
        other_token = form(other_page.text, "/support/totp").fields[csrf.FIELD]
        crossed = await mine.http.post("/support/totp", data={csrf.FIELD: other_token, "code": totp.now()})
        assert crossed.status_code == 403
        done = await totp_step(mine, page, totp.now())
        assert done.status_code == 303 and done.headers["location"] == "/support/"
        # Sign-out takes the active session's own token.
        home = await mine.go("/support/")
        signed_out = await mine.submit(home, "/support/logout")
        assert signed_out.status_code == 200
    finally:
        await mine.aclose()
        await theirs.aclose()
    async with hub.app[DB]() as db:
        assert len((await db.scalars(select(ConsoleSession).where(ConsoleSession.ended_at.is_not(None)))).all()) == 2


async def test_a_callback_state_that_is_not_ascii_is_refused(hub: Hub) -> None:
    browser = Browser(hub)
    try:
        await browser.http.get("/support/login")  # the pending sign-in's cookie
        answer = await browser.http.get("/support/callback?state=%C3%A9&code=x&iss=" + hub.url)
        assert answer.status_code == 400 and "expired" in answer.text
    finally:
        await browser.aclose()


async def test_an_audit_page_before_that_is_not_ascii_digits_is_ignored(hub: Hub) -> None:
    supervisor = await console_for(hub, "supervisor")
    try:
        page = await supervisor.get("/support/audit", before="²")
        assert page.status_code == 200 and "Audit trail" in page.text
    finally:
        await supervisor.aclose()


async def test_a_console_form_posted_from_another_site_is_refused(hub: Hub) -> None:
    person = await linked_person(hub)
    console = await console_for(hub)
    try:
        page = await console.get(f"/support/people/{person.sub}")
        fields = form(page.text, f"/support/people/{person.sub}/reveal").fields
        data = fields | {"field": "phone_number", "reason": "a page elsewhere asks"}
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "https://evil.example"}):
            forged = await console.http.post(f"/support/people/{person.sub}/reveal", data=data, headers=headers)
            assert forged.status_code == 403, headers
        assert await audit_records(hub, action="support.reveal") == []
        shown = await console.http.post(
            f"/support/people/{person.sub}/reveal", data=data | {"reason": "caller asked to confirm it"}, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert shown.status_code == 200 and "+447700900456" in shown.text
    finally:
        await console.aclose()
        await person.browser.aclose()
