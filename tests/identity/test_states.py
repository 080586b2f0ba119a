"""Account and link states keep their stored strings, and the shared predicates on the model
answer the same in Python and in SQL."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from identity.db.models import Account, AccountStatus, Link, LinkStatus


def test_states_are_stored_as_the_same_strings() -> None:
    assert [s.value for s in AccountStatus] == ["active", "pending_guardian"]
    assert [s.value for s in LinkStatus] == ["active", "revoked", "cancelled"]


def test_only_an_active_account_may_be_shared() -> None:
    assert Account(status="active").may_be_shared
    assert not Account(status=AccountStatus.PENDING_GUARDIAN).may_be_shared


def test_only_an_active_link_is_active() -> None:
    assert Link(status="active").is_active
    assert not Link(status=LinkStatus.REVOKED).is_active and not Link(status="cancelled").is_active


def test_the_predicates_are_query_conditions_on_the_stored_strings() -> None:
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        shared = select(Account.id).where(Account.may_be_shared).compile(dialect=dialect)
        live = select(Link.id).where(Link.is_active).compile(dialect=dialect)
        assert "accounts.status = " in str(shared) and list(shared.params.values()) == ["active"]
        assert "links.status = " in str(live) and list(live.params.values()) == ["active"]
