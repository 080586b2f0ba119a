"""The transactional outbox: a change and its event commit together or not at all, and the relay
publishes each row once, in order, then forgets it after the retention period."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer
from sqlalchemy import event, func, inspect, select, text, update

from identity.accounts.store import change_at_once, create_account, update_details
from identity.appkeys import DB
from identity.db.engine import create_engine, create_sessionmaker
from identity.db.models import Account, AccountChange, OutboxEvent, utcnow
from identity.settings import Settings
from identity.web.app import create_app
from sync.metrics import SyncMetrics
from sync.relay import Relay
from sync.runtime import EMBEDDED
from tests.conftest import TEST_SETTINGS, free_port
from tests.sync.helpers import group_timeouts
from tests.support import Hub
from tests.sync.conftest import FAST_SYNC


@pytest.fixture
def settings_overrides(kafka_settings: dict[str, Any]) -> dict[str, Any]:
    # The test drives the relay itself.
    return kafka_settings | {"sync_in_process": False, "kafka_profile_partitions": 2}


async def _events(hub: Hub) -> list[OutboxEvent]:
    async with hub.app[DB]() as db:
        return list((await db.execute(select(OutboxEvent).order_by(OutboxEvent.id))).scalars())


async def test_no_change_without_its_event_and_no_event_without_its_change(hub: Hub) -> None:
    sub = await hub.add_user(verified=True)
    before = len(await _events(hub))

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account).where(Account.sub == sub))
            assert account is not None
            await update_details(db, account, {"given_name": "Rolled"}, channel="support")
            raise Abort
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None and account.given_name == "Ann" and account.version == 1
    assert len(await _events(hub)) == before

    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        changed = await update_details(db, account, {"given_name": "Kept", "locale": "en-GB"}, channel="support", actor="agent")
    events = await _events(hub)
    assert len(events) == before + 1
    payload = events[-1].payload
    assert payload["type"] == "profile.changed" and payload["sub"] == sub and payload["version"] == 2
    assert set(payload["changed"]) == set(changed) == {"given_name", "name", "locale"}
    assert payload["channel"] == "support"
    # The hub's own topic carries which claims changed, never their values.
    assert "Kept" not in str(payload) and "en-GB" not in str(payload)


async def test_a_change_is_written_with_its_history_and_event_in_one_statement_on_postgres(hub: Hub) -> None:
    """A change to an account read in this transaction is written without reading the row again:
    the account's columns (if its version is still the one read), its history row and its event
    are one statement on Postgres, three on SQLite; the row read back is what the object says,
    and committing writes nothing more."""
    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        with _statements(hub) as seen:
            await update_details(db, account, {"given_name": "Written", "phone_number": "+441632960001"}, channel="support", actor="agent")
            await db.commit()
    postgres = hub.settings.resolved_database_url.startswith("postgresql")
    assert len(seen) == (1 if postgres else 3), seen
    assert seen[0].startswith("WITH account AS (UPDATE accounts" if postgres else "UPDATE accounts"), seen
    async with hub.app[DB]() as db:
        stored = await db.scalar(select(Account).where(Account.sub == sub))
        assert stored is not None
    for name in ("given_name", "name", "phone_number", "version", "updated_at"):
        assert getattr(stored, name) == getattr(account, name), name
    assert (stored.given_name, stored.name, stored.version) == ("Written", "Written Example", 2)
    assert (await _history(hub, stored.id))[-1] == (2, ["given_name", "phone_number", "name"], "support", "agent")


async def test_a_change_at_once_commits_its_one_statement_on_its_own_on_postgres(hub: Hub) -> None:
    """``change_at_once``: to an account read earlier, the change is one statement on Postgres,
    committed on its own (another connection sees the account, its history and its event as soon
    as it returns); on SQLite, where it would be three, nothing is written and the caller is told
    to make it in a transaction."""
    sub = await hub.add_user(verified=True)
    account = await _read(hub, sub)
    with _statements(hub) as seen:
        changed = await change_at_once(hub.app[DB], account, {"given_name": "Once"}, channel="service", actor="svc", client_id="svc")
    postgres = hub.settings.resolved_database_url.startswith("postgresql")
    stored = await _read(hub, sub)
    if not postgres:
        assert (changed, seen, stored.version) == (None, [], 1)
        return
    assert changed == ["given_name", "name"]
    assert len(seen) == 1 and seen[0].startswith("WITH account AS (UPDATE accounts"), seen
    assert (account.given_name, account.name, account.version) == ("Once", "Once Example", 2)
    assert (stored.given_name, stored.name, stored.version) == ("Once", "Once Example", 2)
    assert (await _history(hub, stored.id))[-1] == (2, ["given_name", "name"], "service", "svc")
    [event_row] = [e for e in await _events(hub) if e.payload.get("sub") == sub and e.payload.get("type") == "profile.changed"]
    assert (event_row.payload["version"], event_row.payload["client_id"], event_row.payload["channel"]) == (2, "svc", "service")


async def test_a_change_at_once_writes_nothing_where_a_transaction_must_decide(hub: Hub) -> None:
    """Nothing is written, and ``None`` tells the caller to make the change in a transaction,
    when: another change came after the account was read; the account may no longer be shared
    (``shared_only``: a child's waiting for a guardian, whose status changes without a new
    version); nothing changes as read; or the change gives a new address, whose checks read more
    than the row. The transaction then makes the change from the row as it is."""
    if not hub.settings.resolved_database_url.startswith("postgresql"):
        pytest.skip("on SQLite a change is always made in a transaction (see the test above)")
    sessions = hub.app[DB]
    sub = await hub.add_user(verified=True)

    overtaken = await _read(hub, sub)
    await _change_elsewhere(hub, sub, {"family_name": "Other"})
    assert await change_at_once(sessions, overtaken, {"given_name": "Late"}, channel="service", client_id="svc") is None
    assert overtaken.version == 1
    unchanged = await _read(hub, sub)
    assert await change_at_once(sessions, unchanged, {"given_name": "Ann"}, channel="service", client_id="svc") is None
    assert await change_at_once(sessions, unchanged, {"email": "new@example.com"}, channel="service", client_id="svc") is None

    restricted = await _read(hub, sub)
    async with sessions.begin() as db:
        await db.execute(update(Account).where(Account.sub == sub).values(status="pending_guardian"))
    assert await change_at_once(sessions, restricted, {"given_name": "Hidden"}, channel="service", client_id="svc", shared_only=True) is None
    stored = await _read(hub, sub)
    assert (stored.given_name, stored.family_name, stored.version) == ("Ann", "Other", 2)
    assert [h[:2] for h in await _history(hub, stored.id)] == [(1, ["created"]), (2, ["family_name", "name"])]

    # Made in a transaction instead, from the row as it is now.
    async with sessions.begin() as db:
        db.add(overtaken)
        assert await update_details(db, overtaken, {"given_name": "Late"}, channel="service", client_id="svc") == ["given_name", "name"]
    assert (overtaken.given_name, overtaken.family_name, overtaken.version) == ("Late", "Other", 3)


@contextlib.contextmanager
def _statements(hub: Hub) -> Iterator[list[str]]:
    """The statements the hub's database is sent meanwhile, whitespace folded."""
    engine = hub.app[DB].kw["bind"].sync_engine
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


async def _read(hub: Hub, sub: str) -> Account:
    """The account as read by an earlier transaction (its attributes kept after it ended)."""
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        return account


async def _change_elsewhere(hub: Hub, sub: str, changes: dict[str, Any]) -> None:
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        await update_details(db, account, changes, channel="person", actor=sub)


async def test_a_change_worked_out_from_an_account_read_before_another_is_worked_out_again(hub: Hub) -> None:
    """Another transaction changed the account after it was read: the change is not written
    over it from the old reading (nor with the version it took), but worked out again from the
    row as it is, and gets the next version."""
    sub = await hub.add_user(verified=True)
    account = await _read(hub, sub)
    assert account.version == 1
    await _change_elsewhere(hub, sub, {"family_name": "Other"})
    async with hub.app[DB].begin() as db:
        db.add(account)
        changed = await update_details(db, account, {"given_name": "New"}, channel="support", actor="agent")
        assert changed == ["given_name", "name"]
        assert (account.given_name, account.family_name, account.name, account.version) == ("New", "Other", "New Other", 3)
    async with hub.app[DB]() as db:
        stored = await db.scalar(select(Account).where(Account.sub == sub))
        assert stored is not None
    assert (stored.given_name, stored.family_name, stored.name, stored.version) == ("New", "Other", "New Other", 3)
    assert [h[:2] for h in await _history(hub, stored.id)] == [(1, ["created"]), (2, ["family_name", "name"]), (3, ["given_name", "name"])]
    versions = [e.payload["version"] for e in await _events(hub) if e.payload.get("sub") == sub and e.payload.get("type") == "profile.changed"]
    assert versions == [2, 3]


async def test_a_change_back_to_what_was_read_is_not_lost(hub: Hub) -> None:
    """The account as read already has the new value, but another transaction changed it since:
    the change is still made (nothing is skipped on the strength of an old reading)."""
    sub = await hub.add_user(verified=True)
    account = await _read(hub, sub)
    assert account.given_name == "Ann"
    await _change_elsewhere(hub, sub, {"given_name": "Bea"})
    async with hub.app[DB].begin() as db:
        db.add(account)
        changed = await update_details(db, account, {"given_name": "Ann"}, channel="support", actor="agent")
        assert changed == ["given_name", "name"]
    async with hub.app[DB]() as db:
        stored = await db.scalar(select(Account).where(Account.sub == sub))
        assert stored is not None
    assert (stored.given_name, stored.name, stored.version) == ("Ann", "Ann Example", 3)


async def test_concurrent_changes_to_one_account_each_get_their_own_version(hub: Hub) -> None:
    """Two transactions read the account at the same version; the second's write waits on the
    first's, and once the first commits it is worked out again on the row as the first left it."""
    if not hub.settings.resolved_database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: its transactions never interleave like this")
    sub = await hub.add_user(verified=True)
    sessions = hub.app[DB]
    async with sessions.begin() as first, sessions.begin() as second:
        one = await first.scalar(select(Account).where(Account.sub == sub))
        two = await second.scalar(select(Account).where(Account.sub == sub))
        assert one is not None and two is not None and one.version == two.version == 1
        backend = await second.scalar(text("SELECT pg_backend_pid()"))
        await update_details(first, one, {"family_name": "First"}, channel="person", actor=sub)
        waiting = asyncio.create_task(update_details(second, two, {"given_name": "Second"}, channel="support", actor="agent"))
        async with sessions() as watch:
            # The second's write waits for the first's row lock (proved by Postgres, not by a pause).
            async with asyncio.timeout(30):
                while not await watch.scalar(
                    text("SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"), {"pid": backend}
                ):
                    assert not waiting.done(), "the second change did not wait for the first"
        await first.commit()
        assert await waiting == ["given_name", "name"]
        assert (two.given_name, two.family_name, two.name, two.version) == ("Second", "First", "Second First", 3)
    assert [h[:2] for h in await _history(hub, two.id)] == [(1, ["created"]), (2, ["family_name", "name"]), (3, ["given_name", "name"])]


async def test_a_change_undone_by_a_savepoint_is_not_left_on_the_account(hub: Hub) -> None:
    """A change written by its own statement (not the ORM's flush) and then rolled back to a
    savepoint leaves the account object as stored, not as the change would have made it: its
    attributes expired, so the next change reads the row (locked) and is worked out from it."""
    sub = await hub.add_user(verified=True)

    class Abort(Exception):
        pass

    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        with pytest.raises(Abort):
            async with db.begin_nested():
                await update_details(db, account, {"given_name": "Undone"}, channel="support")
                assert account.given_name == "Undone" and account.version == 2
                raise Abort
        state = inspect(account)
        assert {"given_name", "name", "version"} <= state.expired_attributes, "the undone change is still on the object"
        changed = await update_details(db, account, {"family_name": "Kept"}, channel="support")
        assert changed == ["family_name", "name"]
        assert (account.given_name, account.family_name, account.name, account.version) == ("Ann", "Kept", "Ann Kept", 2)
    stored = await _read(hub, sub)
    assert (stored.given_name, stored.name, stored.version) == ("Ann", "Ann Kept", 2)


async def test_attributes_set_on_the_account_but_not_written_are_not_taken_for_its_details(hub: Hub) -> None:
    """Details set on the object outside a change are discarded when the change reads the row,
    never written without a version, a history row and an event of their own."""
    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        account.family_name = "Unrecorded"
        changed = await update_details(db, account, {"given_name": "Given"}, channel="support")
        assert changed == ["given_name", "name"]
    stored = await _read(hub, sub)
    assert (stored.given_name, stored.family_name, stored.name, stored.version) == ("Given", "Example", "Given Example", 2)
    assert [h[:2] for h in await _history(hub, stored.id)] == [(1, ["created"]), (2, ["given_name", "name"])]


async def test_a_date_of_birth_sent_unchanged_does_not_lock_the_row_first(hub: Hub) -> None:
    """The account page sends every detail, the date of birth included: when it is the one read,
    the change is written as any other (compare and set, one statement on Postgres)."""
    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        with _statements(hub) as seen:
            changed = await update_details(db, account, {"given_name": "Same", "birthdate": account.birthdate}, channel="person", actor=sub)
    assert changed == ["given_name", "name"]
    assert not [s for s in seen if s.startswith("SELECT")], seen


async def test_a_new_address_locks_and_reads_the_row_before_anything_is_written(hub: Hub) -> None:
    """A new address is checked against other accounts and ends the links mailed to the old one
    before the change is written: the row is locked and read first, so those are done once, for
    the account as it is, never again after a write that found the row changed."""
    sub = await hub.add_user(verified=True)
    account = await _read(hub, sub)
    await _change_elsewhere(hub, sub, {"given_name": "Meanwhile"})
    async with hub.app[DB].begin() as db:
        db.add(account)
        with _statements(hub) as seen:
            changed = await update_details(db, account, {"email": "new-address@example.com"}, channel="person", actor=sub, email_confirmed=True)
    assert changed == ["email", "email_verified"]
    assert seen[0].startswith("SELECT accounts.") and (
        "FOR UPDATE" in seen[0] or not hub.settings.resolved_database_url.startswith("postgresql")
    ), seen[0][:80]
    assert sum(s.startswith(("UPDATE accounts", "WITH account AS")) for s in seen) == 1, seen
    stored = await _read(hub, sub)
    assert (stored.email, stored.given_name, stored.version) == ("new-address@example.com", "Meanwhile", 3)


async def _history(hub: Hub, account_id: int) -> list[tuple[Any, ...]]:
    async with hub.app[DB]() as db:
        rows = await db.execute(
            select(AccountChange.version, AccountChange.fields, AccountChange.channel, AccountChange.actor)
            .where(AccountChange.account_id == account_id)
            .order_by(AccountChange.version, AccountChange.id)
        )
        return [tuple(r) for r in rows]


async def test_the_relay_publishes_each_row_once_in_order_and_cleans_up(hub: Hub) -> None:
    sub = await hub.add_user(verified=True)
    for i in range(5):
        async with hub.app[DB].begin() as db:
            account = await db.scalar(select(Account).where(Account.sub == sub))
            assert account is not None
            await update_details(db, account, {"family_name": f"F{i}"}, channel="support")
    settings = hub.settings.model_copy(update={"outbox_retention": 0})
    relay = Relay(settings, hub.app[DB], settings.kafka_bootstrap_servers or "", idempotent=settings.kafka_enable_idempotence, metrics=SyncMetrics())
    await relay._connect()
    try:
        assert await relay.publish_batch() == 5
        assert await relay.publish_batch() == 0  # nothing twice
        events = await _events(hub)
        assert all(e.published_at is not None for e in events)
        assert [e.payload["version"] for e in events] == [2, 3, 4, 5, 6]
        relay._last_cleanup = -1e9
        await relay._cleanup_now_and_then()
    finally:
        await relay._disconnect()
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(OutboxEvent)) == 0

    consumer = AIOKafkaConsumer(
        settings.kafka_topic_prefix + "onesignin.profile.v1",
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"check-{dt.datetime.now().timestamp()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **group_timeouts(settings),
    )
    await consumer.start()
    try:
        versions: list[int] = []
        for _ in range(120):  # up to 30 s: joining a new consumer group can take a while
            for messages in (await consumer.getmany(timeout_ms=250)).values():
                for message in messages:
                    assert message.key == sub.encode()
                    versions.append(json.loads(message.value)["version"])
            if len([v for v in versions if v >= 2]) >= 5:
                break
    finally:
        await consumer.stop()
    # One person's events are on one partition, in the order of their versions.
    mine = [v for v in versions if v >= 2]
    assert mine == [2, 3, 4, 5, 6]


async def test_events_a_memory_only_broker_took_with_it_are_published_again(database_url: str, tmp_path: Path) -> None:
    """`serve` on the embedded broker: what an earlier broker took but nobody consumed (the hub
    stopped, the broker's memory went with it) is published again and consumed."""
    settings = Settings(
        data_dir=tmp_path, database_url=database_url, secret_key="s" * 40, kafka_bootstrap_servers=None,
        **(TEST_SETTINGS | FAST_SYNC | {"kafka_profile_partitions": 1}),  # type: ignore[arg-type]
    )
    engine = create_engine(settings)
    async with create_sessionmaker(engine).begin() as db:
        account = await create_account(db, email="lost@example.com", password_hash="x", details={}, channel="cli")
        await update_details(db, account, {"given_name": "Lost"}, channel="support")
        await db.execute(update(OutboxEvent).values(published_at=utcnow()))  # taken by a broker now gone
    await engine.dispose()

    app = create_app(settings, migrate=False)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        assert EMBEDDED in app  # the hub started its own broker
        for _ in range(300):
            async with app[DB]() as db:
                left = await db.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.consumed_at.is_(None)))
            if left == 0:
                break
            await asyncio.sleep(0.1)
        assert left == 0
    finally:
        await server.close()


@pytest.mark.e2e
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_stalled_broker_makes_the_sqlite_relay_give_its_batch_up_before_its_lease_ends(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite, relays take turns by a lease: a batch the broker has not acknowledged by the
    lease's end stays unpublished for the next holder, and is never marked by the first."""
    from sync import relay as relay_module
    from sync.broker import EmbeddedBroker

    monkeypatch.setattr(relay_module, "LEASE_SECONDS", 8)
    monkeypatch.setattr(relay_module, "LEASE_MARGIN", 2.0)
    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        await update_details(db, account, {"family_name": "Stalled"}, channel="support")
    stalling = EmbeddedBroker()
    await stalling.start()
    relay = Relay(hub.settings, hub.app[DB], stalling.bootstrap, idempotent=False, metrics=SyncMetrics())
    try:
        await relay._connect()
        stalling.process.send_signal(signal.SIGSTOP)  # alive, but answers nothing
        started = asyncio.get_running_loop().time()
        with pytest.raises(relay_module.LeaseRunningOut):
            await relay.publish_batch()
        # Given up a margin before the 8 s lease ran out, not after the producer's own timeouts.
        assert asyncio.get_running_loop().time() - started < 8
        assert all(e.published_at is None for e in await _events(hub))
    finally:
        if stalling.process is not None:
            stalling.process.send_signal(signal.SIGCONT)
        await relay._disconnect()
        await stalling.stop()


async def test_events_never_consumed_from_a_memory_only_broker_are_published_again(hub: Hub) -> None:
    """The embedded broker can lose what it acknowledged (restarted empty, it even accepts
    messages for a topic it no longer has): what stays unconsumed is published again."""
    from sync import relay as relay_module

    sub = await hub.add_user(verified=True)
    async with hub.app[DB].begin() as db:
        account = await db.scalar(select(Account).where(Account.sub == sub))
        assert account is not None
        await update_details(db, account, {"family_name": "Lost"}, channel="support")
        await update_details(db, account, {"family_name": "Kept"}, channel="support")
    long_ago = utcnow() - dt.timedelta(seconds=relay_module.REPUBLISH_AFTER + 5)
    events = await _events(hub)
    async with hub.app[DB].begin() as db:
        await db.execute(update(OutboxEvent).values(published_at=long_ago))  # published, then lost...
        await db.execute(update(OutboxEvent).where(OutboxEvent.id == events[-1].id).values(consumed_at=long_ago))  # ...but this one
    relay = Relay(hub.settings, hub.app[DB], "", idempotent=False, metrics=SyncMetrics())
    await relay._republish_now_and_then()
    after = {e.id: e for e in await _events(hub)}
    assert after[events[-2].id].published_at is None  # published again
    assert after[events[-1].id].published_at == long_ago  # consumed: left alone
    assert relay.metrics.relay_republished._value.get() == len(events) - 1

    # Apache Kafka (idempotent producers, replicated logs) keeps what it acknowledged.
    async with hub.app[DB].begin() as db:
        await db.execute(update(OutboxEvent).values(published_at=long_ago))
    kafka_relay = Relay(hub.settings, hub.app[DB], "", idempotent=True, metrics=SyncMetrics())
    await kafka_relay._republish_now_and_then()
    assert all(e.published_at == long_ago for e in await _events(hub))
