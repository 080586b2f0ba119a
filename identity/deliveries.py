"""The state of deliveries to member services, as the hub's data: which channels a service has, a
service's own sync status, resync, dead letters and redelivery, and an endpoint's backlog made
due again once it works. The sync worker (``sync/``) moves this state; the API, the console and
the commands read and steer it here. Functions take the caller's session and never commit."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from identity import notices
from identity.db.models import (
    ACTIVE,
    PENDING,
    Account,
    DeadLetter,
    Delivery,
    Link,
    Notice,
    Resync,
    Service,
    SsfStream,
    utcnow,
)
from identity.db.upsert import insert_for
from identity.logs import REQUEST_ID
from schemas.events import service_topic

RESYNC_CHUNK = 1000


class ResyncInProgress(Exception):
    """The service's previous resync is still being paced out; a new one waits for it."""

    def __init__(self, until: dt.datetime) -> None:
        super().__init__(f"a resync is being paced until {until.isoformat()}")
        self.until = until


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


async def service_status(
    db: AsyncSession, service: Service, *, sub: str | None = None, topic_prefix: str = ""
) -> dict[str, Any] | None:
    """What a service may know of its own sync state; with ``sub``, of one linked person (None
    when that person is not linked to the service)."""
    d = Delivery.__table__.c
    if sub is not None:
        row = (
            await db.execute(
                select(Account.id, Account.version)
                .join(Link, Link.account_id == Account.id)
                .where(Account.sub == sub, Link.service_id == service.id, Link.is_active)
            )
        ).first()
        if row is None:
            return None
        channels = {}
        for r in (await db.execute(select(Delivery).where(Delivery.service_id == service.id, Delivery.account_id == row.id))).scalars():
            channels[r.channel] = {
                "delivered_version": r.delivered_version,
                "pending": r.state == "active" and r.wanted_version > r.delivered_version,
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt_at": _iso(r.next_attempt_at) if r.wanted_version > r.delivered_version else None,
                "failing_since": _iso(r.failing_since),
                "last_error": r.last_error,
                "delivered_at": _iso(r.delivered_at),
            }
        return {"sub": sub, "current_version": row.version, "channels": channels}
    pending = d.wanted_version > d.delivered_version
    backlog = {
        channel: {"pending": count, "oldest_pending_at": _iso(oldest), "failing": failing}
        for channel, count, oldest, failing in (
            await db.execute(
                select(d.channel, func.count(), func.min(d.first_pending_at), func.count(d.failing_since))
                .where(d.service_id == service.id, d.state == ACTIVE, pending)
                .group_by(d.channel)
            )
        )
    }
    dead = await db.scalar(
        select(func.count()).select_from(DeadLetter).where(DeadLetter.service_id == service.id, open_dead_letter())
    )
    webhook = None
    if service.webhook_url:
        state = "disabled" if service.webhook_disabled_at else "quarantined" if service.webhook_quarantined_at else "failing" if service.webhook_failing_since else "healthy"
        webhook = {
            "url": service.webhook_url,
            "state": state,
            "failing_since": _iso(service.webhook_failing_since),
            "quarantined_at": _iso(service.webhook_quarantined_at),
            "disabled_at": _iso(service.webhook_disabled_at),
            "last_error": service.webhook_last_error,
        }
    scim = None
    if service.scim_base_url:
        scim = {
            "base_url": service.scim_base_url,
            "state": scim_state(service),
            "failing_since": _iso(service.scim_failing_since),
            "quarantined_at": _iso(service.scim_quarantined_at),
            "last_error": service.scim_last_error,
        }
    return {
        "client_id": service.client_id,
        "channels": list(channels_of(service.webhook_url, service.topic_enabled, service.scim_base_url)),
        "webhook": webhook,
        "scim": scim,
        "topic": topic_prefix + service_topic(service.client_id) if service.topic_enabled else None,
        "backlog": {c: backlog.get(c, {"pending": 0, "oldest_pending_at": None, "failing": 0}) for c in channels_of(service.webhook_url, service.topic_enabled, service.scim_base_url)},
        "dead_letters": dead or 0,
        # One-off notices (unlinks, rights requests, restrictions, SETs): waiting, and given up.
        "notices": await notices.counts(db, service.id),
        "shared_signals": await _shared_signals(db, service.id),
    }


async def _shared_signals(db: AsyncSession, service_id: int) -> dict[str, Any] | None:
    stream = await db.scalar(select(SsfStream).where(SsfStream.service_id == service_id))
    if stream is None:
        return None
    n = Notice.__table__.c
    counts = dict(
        (
            await db.execute(
                select(n.state, func.count())
                .where(n.service_id == service_id, n.channel.in_(("ssf", "ssf_poll")), n.state.in_(("pending", "dead")))
                .group_by(n.state)
            )
        ).all()
    )
    return {
        "stream_id": stream.stream_id,
        "delivery_method": stream.delivery_method,
        "status": stream.status,
        "state": "quarantined" if stream.quarantined_at else "failing" if stream.failing_since else "healthy",
        "failing_since": _iso(stream.failing_since),
        "quarantined_at": _iso(stream.quarantined_at),
        "last_error": stream.last_error,
        "pending": counts.get("pending", 0),
        "dead": counts.get("dead", 0),
    }


async def resync(
    db: AsyncSession, service: Service, *, rate: float, now: dt.datetime | None = None, started_by: str | None = None
) -> int:
    """Queue a snapshot of every linked person for ``service``, paced at ``rate`` people per
    second (a queued delivery is coalesced with any pending one), and remember it for its
    progress (:func:`resync_progress`). Returns how many people."""
    now = now or utcnow()
    channels = channels_of(service.webhook_url, service.topic_enabled, service.scim_base_url)
    if not channels:
        return 0
    # One at a time: snapshots still waiting for their paced turn (never tried yet, due later
    # than a moment from now, or in flight) are the previous resync's; replaying everyone again
    # meanwhile would only rewrite the same rows and push them further back.
    paced_until = await db.scalar(
        select(func.max(Delivery.next_attempt_at)).where(
            Delivery.service_id == service.id,
            Delivery.state == ACTIVE,
            Delivery.wanted_version > Delivery.delivered_version,
            Delivery.snapshot.is_(True),
            Delivery.attempts == 0,
            Delivery.next_attempt_at > now + dt.timedelta(seconds=1),
        )
    )
    if paced_until is not None:
        raise ResyncInProgress(paced_until)
    rows = (
        await db.execute(
            select(Account.id, Account.version)
            .join(Link, Link.account_id == Account.id)
            .where(Link.service_id == service.id, Link.is_active)
            .order_by(Account.id)
        )
    ).all()
    for start in range(0, len(rows), RESYNC_CHUNK):
        values = [
            {
                "service_id": service.id,
                "account_id": account_id,
                "channel": channel,
                "wanted_version": version,
                "delivered_version": 0,
                "changed": 0,
                "snapshot": True,
                "origin": "person",
                "origin_self": False,
                "first_pending_at": now,
                "state": "active",
                "attempts": 0,
                "next_attempt_at": now + dt.timedelta(seconds=(start + i) / rate),
            }
            for i, (account_id, version) in enumerate(rows[start : start + RESYNC_CHUNK])
            for channel in channels
        ]
        await _queue_snapshots(db, values)
    db.add(Resync(service_id=service.id, started_at=now, people=len(rows), started_by=started_by))
    return len(rows)


async def resync_progress(db: AsyncSession, service: Service) -> dict[str, Any] | None:
    """The service's latest resync: when, by whom, and how many of its ``people`` were sent since
    (a person counts once every channel of the service delivered to them after it started)."""
    last = await db.scalar(select(Resync).where(Resync.service_id == service.id).order_by(Resync.id.desc()).limit(1))
    if last is None:
        return None
    channels = channels_of(service.webhook_url, service.topic_enabled)
    d = Delivery.__table__.c
    done = dict(
        (
            await db.execute(
                select(d.channel, func.count())
                .where(d.service_id == service.id, d.delivered_at >= last.started_at, d.wanted_version <= d.delivered_version)
                .group_by(d.channel)
            )
        ).all()
    )
    sent = min((done.get(c, 0) for c in channels), default=0)
    return {"started_at": last.started_at, "started_by": last.started_by, "people": last.people, "sent": min(sent, last.people)}


async def resync_person(db: AsyncSession, service: Service, account_id: int, *, origin: str = "support", now: dt.datetime | None = None) -> bool:
    """Queue a snapshot of one linked person for ``service``, due now (the support console's
    resync to one service). False when the person has no active link to it or it has no channel."""
    now = now or utcnow()
    version = await db.scalar(
        select(Account.version)
        .join(Link, Link.account_id == Account.id)
        .where(Account.id == account_id, Link.service_id == service.id, Link.is_active)
    )
    channels = channels_of(service.webhook_url, service.topic_enabled, service.scim_base_url)
    if version is None or not channels:
        return False
    values = [
        {
            "service_id": service.id,
            "account_id": account_id,
            "channel": channel,
            "wanted_version": version,
            "delivered_version": 0,
            "changed": 0,
            "snapshot": True,
            "origin": origin,
            "origin_self": False,
            "first_pending_at": now,
            "state": "active",
            "attempts": 0,
            "next_attempt_at": now,
        }
        for channel in channels
    ]
    await _queue_snapshots(db, values)
    return True


async def _queue_snapshots(db: AsyncSession, values: list[dict[str, Any]]) -> None:
    """Upsert snapshot deliveries: coalesced with a pending one, revived if dead; sent with the id
    of the request that asked for them (a service's or support's resync), if one did."""
    rid = REQUEST_ID.get()
    values = [v | {"request_id": rid} for v in values]
    d = Delivery.__table__.c
    stmt = insert_for(db, Delivery).values(values)
    new = stmt.excluded
    await db.execute(
        stmt.on_conflict_do_update(
            index_elements=["service_id", "account_id", "channel"],
            set_={
                "delivered_version": 0,
                "snapshot": True,
                "state": "active",
                "attempts": 0,
                "failing_since": None,
                "first_pending_at": func.coalesce(d.first_pending_at, new.first_pending_at),
                "next_attempt_at": new.next_attempt_at,
                "generation": d.generation + 1,
                "request_id": new.request_id,
            },
        )
    )


def open_dead_letter() -> Any:
    """A dead letter is open while nobody redelivered it and its delivery is still dead: a newer
    change, a link or a resync that revived the delivery closes it, with no write on that path.
    Only the newest dead letter of a delivery can be open (one that died, revived, and died
    again has one open letter, not two)."""
    newer = aliased(DeadLetter)
    return and_(
        DeadLetter.redelivered_at.is_(None),
        exists().where(Delivery.id == DeadLetter.delivery_id, Delivery.state == "dead"),
        ~exists().where(newer.delivery_id == DeadLetter.delivery_id, newer.id > DeadLetter.id),
    )


async def dead_letters(db: AsyncSession, *, client_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    q = (
        select(DeadLetter, Service.client_id, Account.sub)
        .join(Service, Service.id == DeadLetter.service_id)
        .join(Account, Account.id == DeadLetter.account_id)
        .where(open_dead_letter())
        .order_by(DeadLetter.id)
        .limit(limit)
    )
    if client_id:
        q = q.where(Service.client_id == client_id)
    return [
        {
            "id": dl.id,
            "client_id": cid,
            "sub": sub,
            "channel": dl.channel,
            "version": dl.version,
            "attempts": dl.attempts,
            "failing_since": _iso(dl.failing_since),
            "gave_up_at": _iso(dl.gave_up_at),
            "last_error": dl.last_error,
        }
        for dl, cid, sub in (await db.execute(q))
    ]


async def redeliver(db: AsyncSession, *, client_id: str | None = None, ids: list[int] | None = None) -> int:
    """Put dead deliveries back in the queue (as they are now: the current profile is sent)."""
    now = utcnow()
    q = select(DeadLetter.id, DeadLetter.delivery_id).where(open_dead_letter())
    if client_id:
        q = q.join(Service, Service.id == DeadLetter.service_id).where(Service.client_id == client_id)
    if ids:
        q = q.where(DeadLetter.id.in_(ids))
    rows = (await db.execute(q)).all()
    if not rows:
        return 0
    await db.execute(update(DeadLetter).where(DeadLetter.id.in_([r.id for r in rows])).values(redelivered_at=now))
    await db.execute(
        update(Delivery)
        .where(Delivery.id.in_({r.delivery_id for r in rows}), Delivery.state == "dead")
        .values(state="active", attempts=0, failing_since=None, next_attempt_at=now, generation=Delivery.generation + 1)
    )
    return len(rows)


def scim_state(service: Service) -> str:
    """A SCIM server's state as a webhook's is named (a SCIM server is never ``disabled``)."""
    return "quarantined" if service.scim_quarantined_at else "failing" if service.scim_failing_since else "healthy"


def channels_of(webhook_url: str | None, topic_enabled: bool, scim_base_url: str | None = None) -> tuple[str, ...]:
    """The channels a service is delivered to, in this order: its webhook, its topic, its SCIM server."""
    out = ("webhook",) if webhook_url else ()
    if topic_enabled:
        out += ("topic",)
    if scim_base_url:
        out += ("scim",)
    return out


async def resume(db: AsyncSession, service_ids: list[int], channel: str = "webhook") -> None:
    """An endpoint (the webhook, or the SCIM server: ``channel``) works again (or was fixed):
    its backlog is due now, with fresh retry clocks, instead of waiting out schedules that were
    set while it failed. Its notices too."""
    d = Delivery.__table__.c
    await db.execute(
        update(Delivery.__table__)
        .where(d.service_id.in_(service_ids), d.channel == channel, d.state == ACTIVE, d.attempts > 0)
        .values(attempts=0, failing_since=None, next_attempt_at=utcnow())
    )
    n = Notice.__table__.c
    await db.execute(
        update(Notice.__table__)
        .where(n.service_id.in_(service_ids), n.channel == channel, n.state == PENDING, n.attempts > 0)
        .values(attempts=0, failing_since=None, next_attempt_at=utcnow())
    )
