"""The services a worker sends to, as it knows them: one registry per worker process, shared by
its profile deliveries and its notices.

Read from the database every ``REFRESH`` seconds, and at once after this worker changed an
endpoint (quarantined it, brought it back). A webhook that answered ``410`` to either kind is
closed to both from that answer on (:meth:`Endpoints.gone`), not only once the disabling is
committed and the services read again (:meth:`Endpoints.gone_recorded`).

What a (service, channel) may take now is the registry's too: its cap
(``sync_service_concurrency``) less what the asking loop has in flight, one at a time while the
webhook is quarantined, nothing while it is disabled or absent."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook

from identity.db.models import Service, SsfStream
from identity.sealing import KeyCipher, open_scim_token, open_webhook_secret
from identity.settings import Settings
from identity.ssf import streams

log = logging.getLogger(__name__)

REFRESH = 5.0
#: The channels of a service, as rows name them.
CHANNELS = ("webhook", "topic", "scim")


@dataclass(frozen=True)
class Endpoint:
    """A service as the sender needs it."""

    service_id: int
    client_id: str
    webhook_url: str | None
    signer: Webhook | None
    topic_enabled: bool
    disabled: bool
    quarantined: bool
    #: The service's SCIM server and the bearer token the hub presents there (never shown).
    scim_base_url: str | None = None
    scim_token: str | None = field(default=None, repr=False)
    scim_quarantined: bool = False
    #: With a token URL, ``scim_token`` is the client secret of ``scim_client_id`` there.
    scim_token_url: str | None = None
    scim_client_id: str | None = None
    #: A Shared Signals push stream (``sync.ssf``): where SETs go, the receiver's
    #: Authorization header, and whether it takes them now (enabled, not paused or disabled).
    ssf_url: str | None = None
    ssf_authorization: str | None = None
    ssf_open: bool = False
    ssf_quarantined: bool = False
    #: An operator disabled the service (``services disable``): nothing about anyone goes to it,
    #: on any channel, until it is enabled again; its rows wait, unsent.
    service_disabled: bool = False

    @property
    def webhook_open(self) -> bool:
        return self.webhook_url is not None and self.signer is not None and not self.disabled

    @property
    def scim_open(self) -> bool:
        return self.scim_base_url is not None and self.scim_token is not None

    def held(self, channel: str) -> bool:
        """Quarantined: one at a time, every ``sync_quarantine_probe`` seconds (an HTTP endpoint:
        the webhook or the SCIM server; a topic never is)."""
        return self.quarantined if channel == "webhook" else self.scim_quarantined if channel == "scim" else False


@dataclass(frozen=True)
class Room:
    """What each (service, channel) may take now, for rows leased until ``until``: handed to
    the fan-out, which leases that many of the rows it records to this worker."""

    until: dt.datetime
    room: Mapping[tuple[int, str], int]


async def load_endpoints(db: AsyncSession, cipher: KeyCipher) -> dict[int, Endpoint]:
    pushed = {
        stream.service_id: stream
        for stream in (await db.scalars(select(SsfStream).where(SsfStream.delivery_method == streams.PUSH))).all()
    }
    rows = (
        await db.execute(
            select(Service).where(
                or_(Service.webhook_url.is_not(None), Service.topic_enabled, Service.scim_base_url.is_not(None), Service.id.in_(list(pushed)))
            )
        )
    ).scalars()
    out = {}
    for s in rows:
        stream = pushed.get(s.id)
        try:
            ssf_authorization = streams.authorization(cipher, stream) if stream is not None else None
        except Exception:
            log.error("sync: the stream authorization of service %s cannot be read with this hub's secret key", s.client_id)
            stream = None
            ssf_authorization = None
        try:
            scim_token = open_scim_token(cipher, s.scim_token, s.client_id) if s.scim_base_url and s.scim_token else None
        except Exception:
            log.error("sync: the SCIM token of service %s cannot be read with this hub's secret key", s.client_id)
            scim_token = None
        try:
            signer = Webhook(open_webhook_secret(cipher, s.webhook_secret, s.client_id)) if s.webhook_url and s.webhook_secret else None
        except Exception:
            # Sealed under another secret key, say: this service's webhook waits, the others go on.
            log.error("sync: the webhook secret of service %s cannot be read with this hub's secret key", s.client_id)
            signer = None
        out[s.id] = Endpoint(
            service_id=s.id,
            client_id=s.client_id,
            webhook_url=s.webhook_url,
            signer=signer,
            topic_enabled=s.topic_enabled,
            disabled=s.webhook_disabled_at is not None,
            quarantined=s.webhook_quarantined_at is not None,
            scim_base_url=s.scim_base_url,
            scim_token=scim_token,
            scim_quarantined=s.scim_quarantined_at is not None,
            scim_token_url=s.scim_token_url,
            scim_client_id=s.scim_client_id,
            ssf_url=stream.endpoint_url if stream is not None else None,
            ssf_authorization=ssf_authorization,
            ssf_open=stream is not None and stream.status == "enabled" and bool(stream.endpoint_url) and s.disabled_at is None,
            ssf_quarantined=stream is not None and stream.quarantined_at is not None,
            service_disabled=s.disabled_at is not None,
        )
    return out


class Endpoints:
    """The registry. ``topics``: whether this worker can produce to services' topics at all."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], cipher: KeyCipher, *, topics: bool) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cipher = cipher
        self.topics = topics
        self.by_id: dict[int, Endpoint] = {}
        self._read_at = -1e9
        self._gone: set[int] = set()  # webhooks that answered 410, until that is committed

    def get(self, service_id: int) -> Endpoint | None:
        return self.by_id.get(service_id)

    async def refresh(self, force: bool = False) -> None:
        """Read the services again if ``REFRESH`` seconds went by (or ``force``, or stale)."""
        now = asyncio.get_running_loop().time()
        if force or now - self._read_at > REFRESH:
            async with self.sessions() as db:
                await self.load(db)

    async def load(self, db: AsyncSession) -> None:
        """Read the services in ``db`` (a claim that met a service registered since the last read)."""
        self.by_id = await load_endpoints(db, self.cipher)
        self._read_at = asyncio.get_running_loop().time()
        for service_id in self._gone:  # read before the disabling was committed
            self._disable(service_id)

    def stale(self) -> None:
        """This worker changed an endpoint: read them again before the next claim."""
        self._read_at = -1e9

    def gone(self, service_id: int) -> None:
        """A service's webhook answered 410 (to a delivery or a notice): send it nothing more,
        from now on, not only once the disabling is committed and the endpoints read again."""
        self._gone.add(service_id)
        self._disable(service_id)

    def gone_recorded(self, service_ids: set[int]) -> None:
        """The disabling of those webhooks is committed: read the endpoints again."""
        if service_ids:
            self._gone -= service_ids
            self.stale()

    def _disable(self, service_id: int) -> None:
        endpoint = self.by_id.get(service_id)
        if endpoint is not None and not endpoint.disabled:
            self.by_id[service_id] = replace(endpoint, disabled=True)

    # -- what may be taken ------------------------------------------------------------------

    def cap(self, endpoint: Endpoint, channel: str = "webhook") -> int:
        """In flight at once to one service's channel, from one loop: one while quarantined."""
        return 1 if endpoint.held(channel) else self.settings.sync_service_concurrency

    def open(self, endpoint: Endpoint, channel: str) -> bool:
        """Whether ``channel`` of ``endpoint`` takes anything at all now."""
        if endpoint.service_disabled:
            return False
        if channel == "webhook":
            return endpoint.webhook_open
        if channel == "topic":
            return endpoint.topic_enabled and self.topics
        return endpoint.scim_open

    def closed(self, inflight: Mapping[tuple[int, str], int]) -> dict[str, list[int]]:
        """Per channel, the services whose channel takes nothing now: none, disabled, or at
        their cap of rows in flight (``inflight``, by service and channel)."""
        out: dict[str, list[int]] = {c: [] for c in CHANNELS}
        for sid, ep in self.by_id.items():
            for channel in CHANNELS:
                if not self.open(ep, channel) or inflight.get((sid, channel), 0) >= self.cap(ep, channel):
                    out[channel].append(sid)
        return out

    def closed_ssf(self, inflight: Mapping[tuple[int, str], int]) -> list[int]:
        """Services whose Shared Signals push stream takes nothing now: none, paused or disabled,
        or at its cap of SETs in flight (one at a time while quarantined)."""
        cap = self.settings.sync_service_concurrency
        return [
            sid
            for sid, ep in self.by_id.items()
            if not ep.ssf_open or inflight.get((sid, "ssf"), 0) >= (1 if ep.ssf_quarantined else cap)
        ]

    def claim_room(self, inflight: Mapping[tuple[int, str], int]) -> dict[int, int]:
        """Per service, how many more rows one claim may take where that is less than the cap
        (some in flight, or quarantined); services not named may take the whole cap."""
        room = {}
        for sid, ep in self.by_id.items():
            busy = max(inflight.get((sid, c), 0) for c in CHANNELS)
            if busy or ep.quarantined or ep.scim_quarantined:
                room[sid] = max(0, min(self.cap(ep, c) for c in CHANNELS) - busy)
        return room

    def room(self, inflight: Mapping[tuple[int, str], int], budget: int, until: dt.datetime) -> Room:
        """Room for rows the fan-out records to be sent at once: each open endpoint's cap less
        what is in flight, within ``budget``. Quarantined, disabled or unknown endpoints get none
        (their rows stay for the claims)."""
        cap = self.settings.sync_service_concurrency
        room: dict[tuple[int, str], int] = {}
        for sid, ep in self.by_id.items():
            for channel in CHANNELS:
                if self.open(ep, channel) and not ep.held(channel):
                    room[(sid, channel)] = min(budget, cap - inflight.get((sid, channel), 0))
        return Room(until=until, room=MappingProxyType(room))
