"""What operators do to a registered member service (``onesignin services ...``): list, show,
disable and enable it, rotate its client secret with an overlap, remove it. Each change writes
an audit record in the caller's transaction. Functions take the caller's session and never
commit; back-channel logout notices are returned, to be sent once the caller commits."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import link_lifecycle
from identity.admin import InvalidInput
from identity.deliveries import scim_state
from identity.db.models import Account, Delivery, Link, LinkStatus, Notice, RightsRequest, Service, utcnow
from identity.oidc.client import AuthMethod
from identity.oidc.keys import KeyRing
from identity.oidc.logout import LogoutNotice
from identity.rights import OPEN
from identity.support.audit import record
from identity.tokens import digest, new_secret
from schemas.events import service_topic


def _when(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


async def _find(db: AsyncSession, client_id: str, *, lock: bool = False) -> Service:
    query = select(Service).where(Service.client_id == client_id)
    if lock:
        query = query.with_for_update()
    service = await db.scalar(query)
    if service is None:
        raise InvalidInput(f"no service with client_id {client_id!r} (see `onesignin services list`)")
    return service


def _summary(service: Service, active_links: int) -> dict[str, Any]:
    return {
        "client_id": service.client_id,
        "name": service.name,
        "status": "disabled" if service.disabled_at else "active",
        "token_endpoint_auth_method": service.token_endpoint_auth_method,
        "application_type": service.application_type,
        "linked_people": active_links,
        "created_at": _when(service.created_at),
    }


async def _active_links(db: AsyncSession, service_id: int | None = None) -> dict[int, int]:
    query = select(Link.service_id, func.count()).where(Link.status == LinkStatus.ACTIVE.value).group_by(Link.service_id)
    if service_id is not None:
        query = query.where(Link.service_id == service_id)
    return {service: count for service, count in (await db.execute(query)).all()}


async def listing(db: AsyncSession) -> list[dict[str, Any]]:
    """Every registered service, by name, with how many people are linked to it now."""
    links = await _active_links(db)
    services = (await db.scalars(select(Service).where(Service.first_party.is_(False)).order_by(Service.name, Service.id))).all()
    return [_summary(s, links.get(s.id, 0)) for s in services]


async def show(db: AsyncSession, client_id: str) -> dict[str, Any]:
    """One service's registration (never a secret, nor a secret's digest) and its state."""
    service = await _find(db, client_id)
    by_status = dict(
        (await db.execute(select(Link.status, func.count()).where(Link.service_id == service.id).group_by(Link.status))).all()
    )
    pending = await db.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.service_id == service.id, Delivery.delivered_version < Delivery.wanted_version)
    )
    waiting_notices = await db.scalar(select(func.count()).select_from(Notice).where(Notice.service_id == service.id, Notice.state == "pending"))
    return _summary(service, by_status.get(LinkStatus.ACTIVE.value, 0)) | {
        "disabled_at": _when(service.disabled_at),
        "redirect_uris": list(service.redirect_uris),
        "post_logout_redirect_uris": list(service.post_logout_redirect_uris or []),
        "backchannel_logout_uri": service.backchannel_logout_uri,
        "scope": service.scope,
        "grant_types": list(service.grant_types),
        "id_token_signed_response_alg": service.id_token_signed_response_alg,
        "require_par": bool(service.require_par),
        "jwks_uri": service.jwks_uri,
        "webhook_url": service.webhook_url,
        "webhook_disabled_at": _when(service.webhook_disabled_at),
        "topic": service_topic(service.client_id) if service.topic_enabled else None,
        # Whether SCIM provisioning is set, and where; its token is never shown.
        "scim": {
            "base_url": service.scim_base_url,
            "token_set": bool(service.scim_token),
            "token_url": service.scim_token_url,
            "client_id": service.scim_client_id,
            "state": scim_state(service),
        }
        if service.scim_base_url
        else None,
        "cancellation_url": service.cancellation_url,
        "previous_secret_expires_at": _when(service.previous_secret_expires_at)
        if service.previous_secret_hash and service.previous_secret_expires_at and service.previous_secret_expires_at > utcnow()
        else None,
        "links": {status: by_status.get(status.value, 0) for status in LinkStatus},
        "pending_deliveries": pending or 0,
        "pending_notices": waiting_notices or 0,
    }


async def set_disabled(db: AsyncSession, client_id: str, disabled: bool, *, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Disable a service (its sign-ins, client authentication and tokens are refused; its links,
    consents and queued deliveries stay as they are) or enable it again. Idempotent."""
    service = await _find(db, client_id, lock=True)
    if disabled and service.disabled_at is None:
        service.disabled_at = utcnow()
    elif not disabled:
        service.disabled_at = None
    record(
        db, actor_kind="cli", actor=actor, action="service.disabled" if disabled else "service.enabled", reason=reason,
        detail={"client_id": service.client_id},
    )
    await db.flush()
    return {"client_id": service.client_id, "status": "disabled" if disabled else "active", "disabled_at": _when(service.disabled_at)}


@dataclass(frozen=True)
class Rotated:
    client_id: str
    #: The new secret: shown once, stored only as its digest.
    client_secret: str
    #: Until when the replaced secret keeps working (None: it stopped at once).
    previous_secret_expires_at: dt.datetime | None


async def rotate_secret(db: AsyncSession, client_id: str, *, overlap: int, actor: str, reason: str | None = None) -> Rotated:
    """A new client secret; the current one keeps working for ``overlap`` seconds (0: not at
    all), its digest kept with that expiry. A secret still overlapping from an earlier rotation
    stops at once: only the last two secrets work."""
    service = await _find(db, client_id, lock=True)
    if AuthMethod(service.token_endpoint_auth_method) not in (AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST):
        raise InvalidInput(
            f"the service {client_id} authenticates with {service.token_endpoint_auth_method}: it has no client secret to rotate"
        )
    if overlap < 0:
        raise InvalidInput("--overlap must be 0 or more seconds")
    secret = new_secret(32)
    expires = utcnow() + dt.timedelta(seconds=overlap) if overlap and service.secret_hash else None
    service.previous_secret_hash = service.secret_hash if expires else None
    service.previous_secret_expires_at = expires
    service.secret_hash = digest(secret)
    service.secret_set_at = utcnow()
    record(
        db, actor_kind="cli", actor=actor, action="service.secret_rotated", reason=reason,
        detail={"client_id": service.client_id, "overlap_seconds": overlap},
    )
    await db.flush()
    return Rotated(service.client_id, secret, expires)


@dataclass(frozen=True)
class Removed:
    client_id: str
    name: str
    #: Active links ended by the removal (each person's tokens, consent and sessions with it).
    links_ended: int
    #: Deliveries and notices still waiting for the service, dropped with it.
    deliveries_dropped: int
    notices_dropped: int
    logouts: list[LogoutNotice]
    #: Closed rights requests to it, kept (naming it) for the retention period of closed requests.
    rights_requests_kept: int


async def remove(
    db: AsyncSession, keys: KeyRing, issuer: str, client_id: str, *, force: bool, actor: str, reason: str | None = None
) -> Removed:
    """Remove a service and everything the hub keeps for it. Refused while people are linked to
    it unless ``force``: then each active link ends as when the person unlinks it (tokens and
    consent revoked, its queued deliveries dropped, the person's hub sessions logged out of it by
    back-channel logout), and the rows go with the service. Refused while a rights request to it
    is open, whatever ``force`` says: the service must answer it first. Its closed requests stay,
    naming it (``RightsRequest.removed_service_*``), until the retention of closed requests ends."""
    service = await _find(db, client_id, lock=True)
    if service.first_party:
        raise InvalidInput(f"{client_id} is the hub's own client: it cannot be removed")
    open_requests = await db.scalar(
        select(func.count()).select_from(RightsRequest).where(RightsRequest.service_id == service.id, RightsRequest.status.in_(OPEN))
    )
    if open_requests:
        raise InvalidInput(
            f"{open_requests} rights request(s) to {service.name} ({client_id}) are still open: the service must "
            f"complete or refuse them first (`onesignin rights list --service {client_id}`)"
        )
    linked = (
        await db.execute(
            select(Link, Account)
            .join(Account, Account.id == Link.account_id)
            .where(Link.service_id == service.id, Link.status == LinkStatus.ACTIVE.value)
            .with_for_update(of=Link)
        )
    ).all()
    if linked and not force:
        raise InvalidInput(
            f"{len(linked)} person(s) are linked to {service.name} ({client_id}); disable it instead "
            "(`onesignin services disable`), or give --force to end their links (their tokens and consent "
            "revoked, their sessions logged out of it, what is queued for it dropped) and remove it"
        )
    deliveries = await db.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.service_id == service.id, Delivery.delivered_version < Delivery.wanted_version)
    )
    waiting = await db.scalar(select(func.count()).select_from(Notice).where(Notice.service_id == service.id, Notice.state == "pending"))
    logouts: list[LogoutNotice] = []
    for link, account in linked:
        logouts.extend(await link_lifecycle.end(db, keys, issuer, link, account, service, LinkStatus.REVOKED))
    record(
        db, actor_kind="cli", actor=actor, action="service.removed", reason=reason,
        detail={"client_id": service.client_id, "name": service.name, "links_ended": len(linked)},
    )
    for link, account in linked:
        record(db, actor_kind="cli", actor=actor, action="link.ended_by_service_removal", account_sub=account.sub, detail={"client_id": service.client_id})
    # The record of how the service answered people's requests outlives it, like any closed
    # request: kept, naming the service, until the purge's retention period ends.
    kept = await db.execute(
        update(RightsRequest)
        .where(RightsRequest.service_id == service.id)
        .values(service_id=None, removed_service_client_id=service.client_id, removed_service_name=service.name)
    )
    removed = Removed(service.client_id, service.name, len(linked), deliveries or 0, waiting or 0, logouts, kept.rowcount)
    await db.execute(delete(Service).where(Service.id == service.id))
    return removed
