"""The person's rights page: every request with its status, due date and history, and a form to
open one (to the hub or a linked service) that asks for the password again, behind CSRF."""

from __future__ import annotations

import html

from babel.dates import format_date
from sqlalchemy import func, select

from identity.appkeys import DB
from identity.db.models import Notice, RightsRequest, utcnow
from identity.rights import due_at, extended_due_at
from tests.rights_support import add_and_link, call, move, service_token
from tests.support import PASSWORD, Browser, Hub, form


async def count_requests(hub: Hub) -> int:
    async with hub.app[DB]() as db:
        return int(
            await db.scalar(select(func.count()).select_from(RightsRequest)) or 0
        )


async def test_the_page_needs_a_session_and_is_linked_from_the_account_page(
    hub: Hub, browser: Browser
) -> None:
    response = await browser.http.get("/account/rights")
    assert (
        response.status_code == 302
        and response.headers["location"] == "/sign-in?next=/account/rights"
    )
    await hub.add_user(verified=True)
    await browser.sign_in()
    account = await browser.go("/account")
    assert 'href="/account/rights"' in account.text
    page = await browser.go("/account/rights")
    assert (
        page.status_code == 200 and "You have not made any requests yet." in page.text
    )


async def test_opening_a_request_for_a_linked_service_with_the_password(
    hub: Hub, browser: Browser
) -> None:
    await hub.add_user(verified=True)
    forum = await add_and_link(
        hub, browser, "Forum", webhook_url="http://127.0.0.1:9/forum"
    )
    page = await browser.go("/account/rights")
    assert f'<option value="{forum.client_id}">Forum</option>' in page.text
    assert '<option value="hub">' in page.text

    before = utcnow()
    f = form(page.text, "/account/rights")
    posted = await browser.http.post(
        f.action,
        data=f.fields
        | {
            "type": "erasure",
            "target": forum.client_id,
            "details": "Delete my posts",
            "current_password": PASSWORD,
        },
    )
    assert posted.status_code == 303 and posted.headers["location"].startswith(
        "/account/rights?opened="
    )
    shown = await browser.go(posted.headers["location"])
    async with hub.app[DB]() as db:
        request = await db.scalar(select(RightsRequest))
        notices = (await db.scalars(select(Notice))).all()
    assert (
        request is not None
        and request.type == "erasure"
        and request.opened_by == "person"
    )
    assert request.received_at >= before and request.due_at == due_at(
        request.received_at
    )
    assert [n.event_type for n in notices] == ["rights.requested"]
    text = html.unescape(shown.text)
    assert (
        f"Your request (Erasure) was sent to Forum. It must be answered by {format_date(request.due_at, 'long', locale='en_GB')}."
        in text
    )
    assert "Delete my posts" in text and "Received" in text

    # Forum answers; the person sees each step and its reason on the page.
    token = await service_token(forum.rp)
    assert (
        await move(hub, token, request.public_id, "acknowledged")
    ).status_code == 200
    assert (
        await move(
            hub, token, request.public_id, "extended", "We need to restore an archive."
        )
    ).status_code == 200
    text = html.unescape((await browser.go("/account/rights")).text)
    assert (
        "Extended" in text
        and "We need to restore an archive." in text
        and "Acknowledged" in text
    )
    assert f"due by {format_date(extended_due_at(request.received_at), 'long', locale='en_GB')}" in text
    mine = await call(hub, "GET", "/api/v1/me/rights-requests", forum.person_token)
    assert mine.json()["requests"][0]["status"] == "extended"


async def test_a_wrong_or_missing_password_sends_nothing(
    hub: Hub, browser: Browser
) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    page = await browser.go("/account/rights")
    wrong = await browser.submit(
        page,
        "/account/rights",
        type="access",
        target="hub",
        current_password="not my password",
    )
    assert wrong.status_code == 400
    assert "Your password is not correct." in html.unescape(wrong.text)
    assert "Your request was not sent." in wrong.text
    assert '<option value="access" selected>' in wrong.text  # what they chose is kept
    missing = await browser.submit(page, "/account/rights", type="access", target="hub")
    assert missing.status_code == 400
    assert await count_requests(hub) == 0


async def test_the_form_needs_its_csrf_token(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    page = await browser.go("/account/rights")
    fields = form(page.text, "/account/rights").fields | {
        "type": "access",
        "target": "hub",
        "current_password": PASSWORD,
    }
    without = await browser.http.post(
        "/account/rights", data={k: v for k, v in fields.items() if k != "csrf_token"}
    )
    assert without.status_code == 403
    forged = await browser.http.post(
        "/account/rights", data=fields | {"csrf_token": "0" * 64}
    )
    assert forged.status_code == 403
    assert await count_requests(hub) == 0
    ok = await browser.http.post("/account/rights", data=fields)
    assert ok.status_code == 303
    assert await count_requests(hub) == 1


async def test_a_service_never_linked_is_refused_like_an_unknown_one(
    hub: Hub, browser: Browser
) -> None:
    await hub.add_user(verified=True)
    stranger = await hub.add_service(name="Stranger")
    await browser.sign_in()
    page = await browser.go("/account/rights")
    assert stranger.client_id not in page.text
    answers = []
    for target in (stranger.client_id, "nosuchservice"):
        answer = await browser.submit(
            page,
            "/account/rights",
            type="access",
            target=target,
            current_password=PASSWORD,
        )
        assert answer.status_code == 400
        answers.append(html.unescape(answer.text))
    assert all(
        "Choose One Sign In or one of your linked services." in a for a in answers
    )
    bad_type = await browser.submit(
        page,
        "/account/rights",
        type="everything",
        target="hub",
        current_password=PASSWORD,
    )
    assert (
        bad_type.status_code == 400
        and "Choose which right you want to exercise." in bad_type.text
    )
    too_long = await browser.submit(
        page,
        "/account/rights",
        type="access",
        details="x" * 4001,
        current_password=PASSWORD,
    )
    assert too_long.status_code == 400 and "4,000 characters or fewer" in too_long.text
    nul = await browser.submit(
        page,
        "/account/rights",
        type="access",
        details="a\x00b",
        current_password=PASSWORD,
    )
    assert nul.status_code == 400
    assert await count_requests(hub) == 0
