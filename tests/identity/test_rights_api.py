"""The rights-request API: the person (through a service holding their token) opens requests to
the hub or to that service and follows them; the service lists its own requests and moves them
on; nobody sees or moves another service's requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import httpx2
import pytest
from sqlalchemy import select

from identity import rights
from identity.accounts.store import find_by_sub
from identity.appkeys import DB
from identity.db.models import Link, Notice, RightsRequest, Service, utcnow
from schemas.events import RightsRequested
from sync.runtime import METRICS_URL
from tests.rights_support import (
    Linked,
    add_and_link,
    call,
    move,
    open_request,
    service_token,
)
from tests.support import Browser, Hub


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


@pytest.fixture
async def people(hub: Hub, browser: Browser) -> tuple[str, Linked, Linked]:
    """Ann, linked to Store (webhook) and Forum (webhook and topic)."""
    sub = await hub.add_user(verified=True)
    store = await add_and_link(
        hub, browser, "Store", webhook_url="http://127.0.0.1:9/store"
    )
    forum = await add_and_link(
        hub, browser, "Forum", webhook_url="http://127.0.0.1:9/forum", kafka_topic=True
    )
    return sub, store, forum


async def test_opening_requests_to_the_hub_and_to_the_calling_service(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    sub, store, forum = people
    before = utcnow()
    to_hub = await open_request(
        hub,
        store.person_token,
        type="access",
        service=None,
        details="  Everything you hold.  ",
    )
    assert to_hub.status_code == 201, to_hub.text
    body = to_hub.json()
    assert to_hub.headers["location"] == f"/api/v1/me/rights-requests/{body['id']}"
    assert to_hub.headers["cache-control"] == "no-store"
    assert (
        body["status"] == "received"
        and body["service"] is None
        and body["type"] == "access"
    )
    assert body["details"] == "Everything you hold."
    received = parse_time(body["received_at"])
    assert before <= received <= utcnow()
    assert parse_time(body["due_at"]) == rights.due_at(received)
    assert body["overdue"] is False and body["opened_by"] == "person"
    assert [(s["status"], s["by"]) for s in body["history"]] == [("received", "person")]

    to_forum = await open_request(
        hub,
        forum.person_token,
        type="erasure",
        service=forum.client_id,
        details="Delete my posts",
    )
    assert to_forum.status_code == 201, to_forum.text
    forum_request = to_forum.json()
    assert forum_request["service"] == forum.client_id

    # The request to Forum is queued for Forum only, once per channel it has, in the published shape.
    async with hub.app[DB]() as db:
        rows = (
            await db.execute(
                select(Notice, Service.client_id).join(
                    Service, Service.id == Notice.service_id
                )
            )
        ).all()
    assert sorted((client_id, n.channel) for n, client_id in rows) == [
        (forum.client_id, "topic"),
        (forum.client_id, "webhook"),
    ]
    assert len({n.message_id for n, _ in rows}) == 1
    for notice, _ in rows:
        assert notice.event_type == "rights.requested" and notice.key == sub
        event = RightsRequested.model_validate(json.loads(notice.body))
        assert event.id == notice.message_id
        assert event.data.id == forum_request["id"] and event.data.sub == sub
        assert event.data.type == "erasure" and event.data.details == "Delete my posts"
        assert event.data.opened_by == "person"
        assert event.data.due_at == parse_time(forum_request["due_at"])
        assert event.data.received_at == parse_time(forum_request["received_at"])

    # The one-off GET.
    one = await call(hub, "GET", to_hub.headers["location"], store.person_token)
    assert one.status_code == 200 and one.json() == body


async def test_through_one_service_the_person_cannot_reach_or_see_another(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    _, store, forum = people
    mine = (
        await open_request(
            hub, store.person_token, type="objection", service=store.client_id
        )
    ).json()
    hubs = (await open_request(hub, store.person_token, type="access")).json()
    forums = (
        await open_request(
            hub, forum.person_token, type="erasure", service=forum.client_id
        )
    ).json()

    # Store may not open a request to Forum in the person's name: answered as for an unknown service.
    other = await open_request(
        hub, store.person_token, type="access", service=forum.client_id
    )
    unknown = await open_request(
        hub, store.person_token, type="access", service="nosuchservice"
    )
    assert other.status_code == unknown.status_code == 422
    assert other.json() == unknown.json()
    assert other.json()["problems"] == [
        {"field": "service", "message": "No linked service has that client_id."}
    ]

    # Store sees the person's requests to the hub and to Store; never Forum's.
    listed = await call(hub, "GET", "/api/v1/me/rights-requests", store.person_token)
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["requests"]] == [
        hubs["id"],
        mine["id"],
    ]  # newest first
    hidden = await call(
        hub, "GET", f"/api/v1/me/rights-requests/{forums['id']}", store.person_token
    )
    missing = await call(
        hub, "GET", f"/api/v1/me/rights-requests/{uuid.uuid4()}", store.person_token
    )
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    assert {
        r["id"]
        for r in (
            await call(hub, "GET", "/api/v1/me/rights-requests", forum.person_token)
        ).json()["requests"]
    } == {
        forums["id"]
    }  # the request to the hub was opened through Store: not Forum's to read


async def test_the_service_moves_its_request_on_and_the_person_sees_each_step(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    sub, store, forum = people
    opened = (
        await open_request(
            hub, forum.person_token, type="portability", service=forum.client_id
        )
    ).json()
    await open_request(
        hub, store.person_token, type="access"
    )  # the hub's own: not Forum's business
    token = await service_token(forum.rp)

    listed = await call(hub, "GET", "/api/v1/rights-requests", token)
    assert listed.status_code == 200
    [seen] = listed.json()["requests"]
    assert (
        seen["id"] == opened["id"]
        and seen["sub"] == sub
        and seen["status"] == "received"
    )

    acknowledged = await move(hub, token, opened["id"], "acknowledged")
    assert acknowledged.status_code == 200, acknowledged.text
    assert (
        acknowledged.json()["status"] == "acknowledged"
        and acknowledged.json()["due_at"] == opened["due_at"]
    )

    no_reason = await move(hub, token, opened["id"], "extended")
    assert no_reason.status_code == 422
    assert [p["field"] for p in no_reason.json()["problems"]] == ["reason"]
    blank = await move(hub, token, opened["id"], "extended", "   ")
    assert blank.status_code == 422

    extended = await move(
        hub, token, opened["id"], "extended", "Archived data must be restored first."
    )
    assert extended.status_code == 200, extended.text
    received = parse_time(opened["received_at"])
    assert parse_time(extended.json()["due_at"]) == rights.extended_due_at(received)
    assert extended.json()["extended_at"] is not None

    again = await move(hub, token, opened["id"], "extended", "Still more time")
    assert again.status_code == 409
    assert (
        again.json()["error"] == "invalid_transition"
        and "only once" in again.json()["error_description"]
    )
    back = await move(hub, token, opened["id"], "acknowledged")
    assert back.status_code == 409

    completed = await move(
        hub, token, opened["id"], "completed", "Sent to your address on file."
    )
    assert completed.status_code == 200 and completed.json()["closed_at"] is not None
    after = await move(hub, token, opened["id"], "refused", "too late")
    assert after.status_code == 409 and after.json()["current_status"] == "completed"

    # The person (through Forum's token) sees where it stands and every step, with reasons.
    mine = (
        await call(
            hub, "GET", f"/api/v1/me/rights-requests/{opened['id']}", forum.person_token
        )
    ).json()
    assert mine["status"] == "completed" and mine["overdue"] is False
    assert [(s["status"], s["by"], s["reason"]) for s in mine["history"]] == [
        ("received", "person", None),
        ("acknowledged", "service", None),
        ("extended", "service", "Archived data must be restored first."),
        ("completed", "service", "Sent to your address on file."),
    ]
    assert (await call(hub, "GET", "/api/v1/rights-requests", token)).json()[
        "requests"
    ] == []
    assert (
        len(
            (
                await call(
                    hub,
                    "GET",
                    "/api/v1/rights-requests",
                    token,
                    params={"state": "all"},
                )
            ).json()["requests"]
        )
        == 1
    )


async def test_refusing_needs_a_reason(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    _, store, _ = people
    opened = (
        await open_request(
            hub, store.person_token, type="erasure", service=store.client_id
        )
    ).json()
    token = await service_token(store.rp)
    assert (await move(hub, token, opened["id"], "refused")).status_code == 422
    refused = await move(
        hub, token, opened["id"], "refused", "We must keep invoices for seven years."
    )
    assert refused.status_code == 200 and refused.json()["status"] == "refused"
    mine = (
        await call(
            hub, "GET", f"/api/v1/me/rights-requests/{opened['id']}", store.person_token
        )
    ).json()
    assert mine["history"][-1] == mine["history"][-1] | {
        "status": "refused",
        "by": "service",
        "reason": "We must keep invoices for seven years.",
    }


async def test_a_service_cannot_see_or_move_another_services_request(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    _, store, forum = people
    forums = (
        await open_request(
            hub, forum.person_token, type="erasure", service=forum.client_id
        )
    ).json()
    hubs = (await open_request(hub, store.person_token, type="access")).json()
    store_token = await service_token(store.rp)

    answers = [
        await move(hub, store_token, forums["id"], "acknowledged"),  # Forum's
        await move(hub, store_token, hubs["id"], "acknowledged"),  # the hub's own
        await move(hub, store_token, str(uuid.uuid4()), "acknowledged"),  # unknown
        await move(hub, store_token, "not-an-id", "acknowledged"),  # malformed
    ]
    assert {a.status_code for a in answers} == {404}
    assert len({a.text for a in answers}) == 1
    assert (
        await call(
            hub, "GET", "/api/v1/rights-requests", store_token, params={"state": "all"}
        )
    ).json()["requests"] == []
    async with hub.app[DB]() as db:
        statuses = set(await db.scalars(select(RightsRequest.status)))
    assert statuses == {"received"}

    # A person's token is not a service's, and a service's token is not a person's.
    assert (
        await move(hub, store.person_token, forums["id"], "acknowledged")
    ).status_code == 401
    assert (
        await call(hub, "GET", "/api/v1/rights-requests", store.person_token)
    ).status_code == 401
    assert (await open_request(hub, store_token, type="access")).status_code == 401
    assert (
        await call(hub, "GET", "/api/v1/me/rights-requests", None)
    ).status_code == 401


async def test_bad_input_is_answered_field_by_field_never_with_a_500(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    _, store, _ = people
    token = store.person_token
    path = "/api/v1/me/rights-requests"
    headers = {"Content-Type": "application/json"}
    assert (
        await call(
            hub,
            "POST",
            path,
            token,
            content=b"type=access",
            headers={"Content-Type": "text/plain"},
        )
    ).status_code == 415
    assert (
        await call(hub, "POST", path, token, content=b"{nope", headers=headers)
    ).status_code == 400
    assert (
        await call(hub, "POST", path, token, content=b'["access"]', headers=headers)
    ).status_code == 400
    assert (
        await call(hub, "POST", path, token, content=b"\xff\xfe", headers=headers)
    ).status_code == 400
    big = await call(
        hub, "POST", path, token, json={"type": "access", "details": "x" * 70000}
    )
    assert big.status_code == 413
    bad = await open_request(
        hub, token, type="everything", details="x" * 4001, colour="blue", service=""
    )
    assert bad.status_code == 422
    assert {p["field"] for p in bad.json()["problems"]} == {
        "type",
        "details",
        "colour",
        "service",
    }
    assert all(p["message"] for p in bad.json()["problems"])
    nul = await open_request(hub, token, type="access", details="a\x00b")
    assert nul.status_code == 422 and nul.json()["problems"][0]["field"] == "details"
    assert (await open_request(hub, token, details="no type")).status_code == 422

    service = await service_token(store.rp)
    opened = (
        await open_request(hub, token, type="access", service=store.client_id)
    ).json()
    wrong = await move(hub, service, opened["id"], "received")
    assert wrong.status_code == 422 and wrong.json()["problems"][0]["field"] == "status"
    assert (
        await move(hub, service, opened["id"], "completed", "a\x00")
    ).status_code == 422
    state = await call(
        hub, "GET", "/api/v1/rights-requests", service, params={"state": "later"}
    )
    assert state.status_code == 400 and state.json()["problems"][0]["field"] == "state"
    # Nothing above changed the request.
    assert (await call(hub, "GET", f"{path}/{opened['id']}", token)).json()[
        "status"
    ] == "received"


async def test_overdue_requests_are_listed_and_counted(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    sub, store, forum = people
    long_ago = utcnow() - dt.timedelta(days=40)
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        late = await rights.open_request(
            db,
            account,
            type="access",
            client_id=forum.client_id,
            details=None,
            now=long_ago,
        )
        await rights.open_request(
            db, account, type="erasure", client_id=None, details=None, now=long_ago
        )
        done = await rights.open_request(
            db,
            account,
            type="erasure",
            client_id=forum.client_id,
            details=None,
            now=long_ago,
        )
        await rights.move(
            db,
            done,
            status="completed",
            reason=None,
            actor_kind="service",
            actor=forum.client_id,
        )
        late_id = late.public_id
    fresh = (
        await open_request(
            hub, forum.person_token, type="objection", service=forum.client_id
        )
    ).json()

    token = await service_token(forum.rp)
    overdue = (
        await call(
            hub, "GET", "/api/v1/rights-requests", token, params={"state": "overdue"}
        )
    ).json()["requests"]
    assert [(r["id"], r["overdue"]) for r in overdue] == [(late_id, True)]
    open_ = (await call(hub, "GET", "/api/v1/rights-requests", token)).json()[
        "requests"
    ]
    assert [(r["id"], r["overdue"]) for r in open_] == [
        (late_id, True),
        (fresh["id"], False),
    ]  # earliest due first
    mine = (
        await call(hub, "GET", "/api/v1/me/rights-requests", forum.person_token)
    ).json()["requests"]
    assert {r["id"]: r["overdue"] for r in mine}[late_id] is True

    # The gauge (read from the database by a scrape that finds it older than 5 s) counts them per target.
    expected = {"hub": 1.0, forum.client_id: 1.0, store.client_id: 0.0}
    for _ in range(40):
        async with httpx2.AsyncClient(timeout=30) as http:
            text = (await http.get(hub.app[METRICS_URL])).text
        found = {
            line.split('target="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("onesignin_rights_requests_overdue{")
        }
        if found == expected:
            break
        await asyncio.sleep(0.25)
    assert found == expected


async def test_support_opens_a_request_on_the_persons_behalf(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    sub, _, forum = people
    stranger = await hub.add_service(name="Stranger")
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        # An unlinked or cancelled link still names a controller the person can ask.
        link = await db.scalar(
            select(Link).join(Service).where(Service.client_id == forum.client_id)
        )
        assert link is not None
        link.status = "revoked"
        opened = await rights.open_for_support(
            db,
            account,
            agent="agent-7",
            type="rectification",
            client_id=forum.client_id,
            details="Name misspelt",
        )
        public_id = opened.public_id
        # A service the person never linked is refused exactly like an unknown one.
        for client_id in (stranger.client_id, "nosuchservice"):
            with pytest.raises(rights.UnknownTarget) as refused:
                await rights.open_for_support(
                    db,
                    account,
                    agent="agent-7",
                    type="access",
                    client_id=client_id,
                    details=None,
                )
            assert refused.value.public == "No linked service has that client_id."

    async with hub.app[DB]() as db:
        bodies = [json.loads(b) for b in await db.scalars(select(Notice.body))]
    assert [(b["data"]["id"], b["data"]["opened_by"]) for b in bodies] == [
        (public_id, "support")
    ] * 2  # webhook and topic
    seen = (
        await call(
            hub, "GET", f"/api/v1/me/rights-requests/{public_id}", forum.person_token
        )
    ).json()
    assert seen["opened_by"] == "support" and seen["type"] == "rectification"
    assert [(s["status"], s["by"]) for s in seen["history"]] == [
        ("received", "support")
    ]


async def test_racing_answers_settle_one_way(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    _, store, _ = people
    opened = (
        await open_request(
            hub, store.person_token, type="erasure", service=store.client_id
        )
    ).json()
    token = await service_token(store.rp)
    answers = await asyncio.gather(
        move(hub, token, opened["id"], "completed", "Deleted."),
        move(hub, token, opened["id"], "refused", "Legal hold."),
        move(hub, token, opened["id"], "completed", "Deleted."),
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409]
    seen = (
        await call(
            hub, "GET", f"/api/v1/me/rights-requests/{opened['id']}", store.person_token
        )
    ).json()
    winner = next(a for a in answers if a.status_code == 200).json()
    assert seen["status"] == winner["status"]
    assert [s["status"] for s in seen["history"]] == ["received", winner["status"]]


async def test_a_service_sees_only_the_hub_requests_opened_through_it(
    hub: Hub, browser: Browser, people: tuple[str, Linked, Linked]
) -> None:
    """The person's requests to the hub, with their free text, are shown through a service's
    token only when that service opened them; the account page shows them all."""
    sub, store, forum = people
    via_store = (
        await open_request(hub, store.person_token, type="access", details="store asked")
    ).json()
    via_forum = (
        await open_request(
            hub, forum.person_token, type="objection", details="private to forum"
        )
    ).json()
    async with hub.app[DB].begin() as db:
        account = await find_by_sub(db, sub)
        assert account is not None
        at_hub = await rights.open_request(
            db, account, type="rectification", client_id=None, details="my own words"
        )
        at_hub_id = at_hub.public_id
        row = await db.scalar(
            select(RightsRequest).where(RightsRequest.public_id == via_store["id"])
        )
        assert row is not None and row.opened_via_service_id is not None

    for linked, mine, others in (
        (store, via_store["id"], (via_forum["id"], at_hub_id)),
        (forum, via_forum["id"], (via_store["id"], at_hub_id)),
    ):
        listed = await call(hub, "GET", "/api/v1/me/rights-requests", linked.person_token)
        assert [r["id"] for r in listed.json()["requests"]] == [mine]
        assert "my own words" not in listed.text
        missing = await call(
            hub, "GET", f"/api/v1/me/rights-requests/{uuid.uuid4()}", linked.person_token
        )
        for other in others:
            hidden = await call(
                hub, "GET", f"/api/v1/me/rights-requests/{other}", linked.person_token
            )
            assert hidden.status_code == missing.status_code == 404
            assert hidden.json() == missing.json()

    # The person, at the hub, sees every request.
    page = await browser.go("/account/rights")
    assert page.status_code == 200
    for text in ("store asked", "private to forum", "my own words"):
        assert text in page.text


async def test_an_overdue_request_can_no_longer_be_extended(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    """GDPR Art. 12(3): the extension is decided within the first month, not after it."""
    _, store, _ = people
    token = await service_token(store.rp)
    late, in_time = [
        (
            await open_request(
                hub, store.person_token, type="erasure", service=store.client_id
            )
        ).json()
        for _ in range(2)
    ]
    async with hub.app[DB].begin() as db:
        row = await db.scalar(
            select(RightsRequest).where(RightsRequest.public_id == late["id"])
        )
        assert row is not None
        row.received_at -= dt.timedelta(days=40)
        row.due_at = rights.due_at(row.received_at)
    assert (await move(hub, token, late["id"], "acknowledged")).status_code == 200
    refused = await move(hub, token, late["id"], "extended", "We need more time")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "invalid_transition"
    assert refused.json()["current_status"] == "acknowledged"
    assert "past its due date" in refused.json()["error_description"]
    # Nothing changed; it can still be answered.
    async with hub.app[DB]() as db:
        row = await db.scalar(
            select(RightsRequest).where(RightsRequest.public_id == late["id"])
        )
        assert row is not None and row.status == "acknowledged" and row.extended_at is None
    done = await move(hub, token, late["id"], "completed")
    assert done.status_code == 200, done.text
    # Within the first month the extension is granted as before.
    extended = await move(hub, token, in_time["id"], "extended", "We need more time")
    assert extended.status_code == 200, extended.text


async def test_an_unstorable_request_id_is_not_found_like_an_unknown_one(
    hub: Hub, people: tuple[str, Linked, Linked]
) -> None:
    _, store, _ = people
    token = await service_token(store.rp)
    unknown = str(uuid.uuid4())
    for bad in ("%00", f"{unknown}%00", f"{unknown}%0A"):
        mine = await call(hub, "GET", f"/api/v1/me/rights-requests/{bad}", store.person_token)
        missing = await call(hub, "GET", f"/api/v1/me/rights-requests/{unknown}", store.person_token)
        assert mine.status_code == 404 and mine.json() == missing.json()
        moved = await move(hub, token, bad, "acknowledged")
        assert moved.status_code == 404 and moved.json() == (await move(hub, token, unknown, "acknowledged")).json()
