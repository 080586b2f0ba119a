"""Least privilege in the console: staff accounts are looked after by supervisors only, nobody
acts on their own account there, and reading the audit trail is itself recorded."""

from __future__ import annotations

from tests.support import Hub
from tests.support_console.console import audit_records, console_for


async def test_an_agent_cannot_open_or_change_a_staff_account(hub: Hub) -> None:
    colleague = await console_for(hub, "agent", "colleague@example.com")
    agent = await console_for(hub)
    supervisor = await console_for(hub, "supervisor")
    try:
        refused = await agent.get(f"/support/people/{colleague.sub}")
        allowed = await supervisor.get(f"/support/people/{colleague.sub}")
    finally:
        for c in (colleague, agent, supervisor):
            await c.aclose()
    assert refused.status_code == 403 and "colleague@example.com" not in refused.text
    assert allowed.status_code == 200 and "colleague@example.com" in allowed.text
    views = await audit_records(hub, account_sub=colleague.sub, action="support.view")
    assert [r.actor for r in views] == [supervisor.sub]


async def test_nobody_changes_their_own_account_in_the_console(hub: Hub) -> None:
    supervisor = await console_for(hub, "supervisor")
    try:
        page = await supervisor.get(f"/support/people/{supervisor.sub}")
        assert page.status_code == 200
        edit = await supervisor.submit(page, f"/support/people/{supervisor.sub}/edit", follow=False, given_name="Me", reason="fixing my own name")
    finally:
        await supervisor.aclose()
    assert edit.status_code == 403
    assert await audit_records(hub, account_sub=supervisor.sub, action="support.edit") == []


async def test_reading_the_audit_trail_is_recorded(hub: Hub) -> None:
    supervisor = await console_for(hub, "supervisor")
    try:
        assert (await supervisor.get("/support/audit")).status_code == 200
        assert (await supervisor.get("/support/audit", account="some-sub")).status_code == 200
    finally:
        await supervisor.aclose()
    reads = await audit_records(hub, action="support.audit_view")
    assert [(r.actor, r.account_sub) for r in reads] == [(supervisor.sub, None), (supervisor.sub, "some-sub")]
