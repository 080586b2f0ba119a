"""The console's home: searching people, each search audited by kind and count, never by text."""

from __future__ import annotations

import json

from tests.support import Hub
from tests.support_console.console import audit_records, console_for


async def test_search_lists_people_linking_to_their_profiles_and_is_audited_without_the_query(hub: Hub) -> None:
    ann = await hub.add_user(verified=True)
    await hub.add_user(email="anne.other@example.com", given_name="Anne", family_name="Other")
    console = await console_for(hub)
    try:
        page = await console.get("/support/")
        assert page.status_code == 200
        assert 'name="q"' in page.text and "Results" not in page.text
        assert await audit_records(hub, action="support.search") == []  # an empty form searches nothing

        page = await console.get("/support/", q="ann@example.com")
        assert page.status_code == 200
        assert f'href="/support/people/{ann}"' in page.text
        assert "anne.other@example.com" not in page.text

        page = await console.get("/support/", q="ann")
        assert "ann@example.com" in page.text and "anne.other@example.com" in page.text

        page = await console.get("/support/", q="anne.other@exa")
        assert "anne.other@example.com" in page.text and "ann@example.com" not in page.text

        page = await console.get("/support/", q="Nobody Here")
        assert "Nobody matches." in page.text
    finally:
        await console.aclose()

    records = await audit_records(hub, action="support.search")
    assert [(r.detail or {}).get("kind") for r in records] == ["email", "name", "email_prefix", "name"]
    assert [(r.detail or {}).get("results") for r in records] == [1, 2, 1, 0]
    # Which people each search listed, by sub (so a person's trail can show who found them).
    other = next(r for r in records if (r.detail or {}).get("kind") == "email_prefix")
    assert [(r.detail or {}).get("subs") for r in records][0] == [ann] and len(records[1].detail["subs"]) == 2
    assert other.detail["subs"] != [ann] and len(other.detail["subs"]) == 1 and records[3].detail["subs"] == []
    assert {r.actor for r in records} == {console.sub} and {r.actor_kind for r in records} == {"agent"}
    assert {r.account_sub for r in records} == {None}
    stored = json.dumps([[r.reason, r.detail] for r in records]).lower()
    assert "ann" not in stored and "nobody" not in stored


async def test_search_needs_a_console_session(hub: Hub) -> None:
    import httpx2

    async with httpx2.AsyncClient(base_url=hub.url, timeout=30) as http:
        page = await http.get("/support/", params={"q": "ann@example.com"})
    assert page.status_code == 303 and page.headers["location"] == "/support/login"
    assert await audit_records(hub) == []
