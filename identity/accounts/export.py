"""Builds the access and portability export (``schemas.export.AccountExport``) of one account
from every table that holds rows about it. Read-only; takes the caller's session."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import (
    Account,
    AccountChange,
    AuditRecord,
    AuthorizationCode,
    BrowserSession,
    Consent,
    ConsoleSession,
    DeadLetter,
    Delivery,
    EmailToken,
    Link,
    Notice,
    RightsRequest,
    RightsRequestEvent,
    Service,
    SessionService,
    SignInEvent,
    SecondFactor,
    SecondFactorRemoval,
    Passkey,
    StaffMember,
    StaffService,
    Token,
    utcnow,
)
from identity.oidc.scopes import split
from schemas.export import (
    AccountExport,
    AccountPart,
    AuditPart,
    AuthorizationCodePart,
    ChangePart,
    ConsentPart,
    ConsoleSessionPart,
    DeadLetterPart,
    DeliveryPart,
    GrantPart,
    LinkPart,
    MailedLinkPart,
    MarketingChoice,
    MarketingPart,
    NoticePart,
    RightsRequestPart,
    RightsRequestStep,
    ServiceRef,
    SessionPart,
    SignInPart,
    SecondFactorPart,
    PasskeyPart,
    SecondFactorRemovalPart,
    StaffPart,
    StaffServicePart,
)


async def build(db: AsyncSession, account: Account) -> AccountExport:
    """Everything the hub holds about ``account``."""
    services = await _services(db)

    def ref(service_id: int) -> ServiceRef:
        return services[service_id]

    def addressed_to(request: RightsRequest) -> ServiceRef | None:
        """The service a request was addressed to, present or removed (None: the hub)."""
        if request.service_id is not None:
            return ref(request.service_id)
        if request.removed_service_client_id is not None:
            return ServiceRef(client_id=request.removed_service_client_id, name=request.removed_service_name or "")
        return None

    async def rows(model: Any, *order: Any) -> list[Any]:
        return list((await db.scalars(select(model).where(model.account_id == account.id).order_by(*order))).all())

    links = await rows(Link, Link.created_at, Link.id)
    service_rows = {s.id: s for s in (await db.scalars(select(Service).where(Service.id.in_([l.service_id for l in links])))).all()}
    requests = await rows(RightsRequest, RightsRequest.received_at, RightsRequest.id)
    history: dict[int, list[RightsRequestStep]] = defaultdict(list)
    if requests:
        for e in (
            await db.scalars(
                select(RightsRequestEvent)
                .where(RightsRequestEvent.request_id.in_([r.id for r in requests]))
                .order_by(RightsRequestEvent.at, RightsRequestEvent.id)
            )
        ).all():
            history[e.request_id].append(RightsRequestStep(status=e.status, reason=e.reason, actor_kind=e.actor_kind, actor=e.actor, at=e.at))
    sessions = await rows(BrowserSession, BrowserSession.created_at, BrowserSession.id)
    session_services: dict[int, list[ServiceRef]] = defaultdict(list)
    if sessions:
        for ss in (
            await db.scalars(select(SessionService).where(SessionService.session_id.in_([s.id for s in sessions])).order_by(SessionService.id))
        ).all():
            session_services[ss.session_id].append(ref(ss.service_id))
    audit = (
        await db.scalars(select(AuditRecord).where(AuditRecord.account_sub == account.sub).order_by(AuditRecord.at, AuditRecord.id))
    ).all()

    return AccountExport(
        exported_at=utcnow(),
        account=AccountPart(
            sub=account.sub,
            email=account.email,
            email_verified=account.email_verified,
            given_name=account.given_name,
            family_name=account.family_name,
            name=account.name,
            birthdate=account.birthdate,
            locale=account.locale,
            zoneinfo=account.zoneinfo,
            phone_number=account.phone_number,
            address=account.address or None,
            status=account.status,
            guardian_email=account.guardian_email,
            guardian_consent_at=account.guardian_consent_at,
            restricted_at=account.restricted_at,
            delete_after=account.delete_after,
            version=account.version,
            created_at=account.created_at,
            updated_at=account.updated_at,
        ),
        marketing=MarketingPart(
            news=MarketingChoice(opted_in=account.marketing_news, changed_at=account.marketing_news_at),
            competitions=MarketingChoice(opted_in=account.marketing_competitions, changed_at=account.marketing_competitions_at),
            offers=MarketingChoice(opted_in=account.marketing_offers, changed_at=account.marketing_offers_at),
        ),
        consents=[
            ConsentPart(service=ref(c.service_id), scopes=split(c.scope), granted_at=c.granted_at, revoked_at=c.revoked_at)
            for c in await rows(Consent, Consent.granted_at, Consent.id)
        ],
        links=[
            LinkPart(
                service=ref(link.service_id),
                status=link.status,
                scopes=split(link.scope),
                created_at=link.created_at,
                updated_at=link.updated_at,
                ended_at=link.ended_at,
                cancellation_url=service_rows[link.service_id].cancellation_url,
                cancellation_instructions=service_rows[link.service_id].cancellation_instructions,
            )
            for link in links
        ],
        rights_requests=[
            RightsRequestPart(
                id=r.public_id,
                service=addressed_to(r),
                type=r.type,
                details=r.details,
                status=r.status,
                opened_by=r.opened_by,
                opened_by_actor=r.opened_by_actor,
                opened_via=ref(r.opened_via_service_id) if r.opened_via_service_id is not None else None,
                received_at=r.received_at,
                due_at=r.due_at,
                extended_at=r.extended_at,
                closed_at=r.closed_at,
                history=history[r.id],
            )
            for r in requests
        ],
        sign_ins=[
            SignInPart(at=e.at, address=e.address, succeeded=e.succeeded) for e in await rows(SignInEvent, SignInEvent.at, SignInEvent.id)
        ],
        changes=[
            ChangePart(version=c.version, fields=list(c.fields), channel=c.channel, actor=c.actor, at=c.at)
            for c in await rows(AccountChange, AccountChange.version, AccountChange.id)
        ],
        sessions=[
            SessionPart(
                created_at=s.created_at,
                auth_time=s.auth_time,
                last_seen_at=s.last_seen_at,
                expires_at=s.expires_at,
                ended_at=s.ended_at,
                amr=s.amr.split(),
                user_agent=s.user_agent,
                services=session_services[s.id],
            )
            for s in sessions
        ],
        grants=[
            GrantPart(
                service=ref(t.service_id),
                scopes=split(t.scope),
                issued_at=t.issued_at,
                access_expires_at=t.access_expires_at,
                refresh_expires_at=t.refresh_expires_at,
                revoked_at=t.revoked_at,
            )
            for t in await rows(Token, Token.issued_at, Token.id)
        ],
        authorization_codes=[
            AuthorizationCodePart(service=ref(c.service_id), scopes=split(c.scope), created_at=c.created_at, expires_at=c.expires_at, used_at=c.used_at)
            for c in await rows(AuthorizationCode, AuthorizationCode.created_at, AuthorizationCode.id)
        ],
        mailed_links=[
            MailedLinkPart(purpose=t.purpose, sent_to=t.email, created_at=t.created_at, expires_at=t.expires_at, used_at=t.used_at)
            for t in await rows(EmailToken, EmailToken.created_at, EmailToken.id)
        ],
        deliveries=[
            DeliveryPart(
                service=ref(d.service_id),
                channel=d.channel,
                delivered_version=d.delivered_version,
                delivered_at=d.delivered_at,
                pending=d.state == "active" and d.wanted_version > d.delivered_version,
                state=d.state,
            )
            for d in await rows(Delivery, Delivery.id)
        ],
        dead_letters=[
            DeadLetterPart(service=ref(d.service_id), channel=d.channel, version=d.version, gave_up_at=d.gave_up_at, redelivered_at=d.redelivered_at)
            for d in await rows(DeadLetter, DeadLetter.gave_up_at, DeadLetter.id)
        ],
        notices=[
            NoticePart(service=ref(n.service_id), type=n.event_type, channel=n.channel, created_at=n.created_at, state=n.state, delivered_at=n.delivered_at)
            for n in await rows(Notice, Notice.created_at, Notice.id)
        ],
        audit=[AuditPart(at=a.at, actor_kind=a.actor_kind, actor=a.actor, action=a.action, reason=a.reason) for a in audit],
        staff=await _staff(db, account, services),
        second_factor=await _second_factor(db, account),
        passkeys=[
            PasskeyPart(name=k.name, created_at=k.created_at, last_used_at=k.last_used_at, synced=k.backup_eligible, transports=k.transports)
            for k in await db.scalars(select(Passkey).where(Passkey.account_id == account.id).order_by(Passkey.created_at, Passkey.id))
        ],
        second_factor_removals=[
            SecondFactorRemovalPart(status=r.status, reason=r.reason, requested_at=r.requested_at, decided_at=r.decided_at)
            for r in await db.scalars(
                select(SecondFactorRemoval).where(SecondFactorRemoval.account_id == account.id).order_by(SecondFactorRemoval.requested_at, SecondFactorRemoval.id)
            )
        ],
    )


async def _second_factor(db: AsyncSession, account: Account) -> SecondFactorPart | None:
    factor = await db.scalar(select(SecondFactor).where(SecondFactor.account_id == account.id))
    if factor is None:
        return None
    return SecondFactorPart(created_at=factor.created_at, confirmed_at=factor.confirmed_at, recovery_codes_left=len(factor.recovery_codes))


async def _staff(db: AsyncSession, account: Account, services: dict[int, ServiceRef]) -> StaffPart | None:
    staff = await db.scalar(select(StaffMember).where(StaffMember.account_id == account.id))
    if staff is None:
        return None
    sessions = (
        await db.scalars(select(ConsoleSession).where(ConsoleSession.staff_id == staff.id).order_by(ConsoleSession.created_at, ConsoleSession.id))
    ).all()
    looked_after = (
        await db.scalars(select(StaffService).where(StaffService.staff_id == staff.id).order_by(StaffService.granted_at, StaffService.service_id))
    ).all()
    return StaffPart(
        role=staff.role,
        created_at=staff.created_at,
        created_by=staff.created_by,
        disabled_at=staff.disabled_at,
        console_sessions=[
            ConsoleSessionPart(created_at=c.created_at, last_seen_at=c.last_seen_at, expires_at=c.expires_at, ended_at=c.ended_at, address=c.address)
            for c in sessions
        ],
        looks_after=[StaffServicePart(service=services[g.service_id], granted_at=g.granted_at, granted_by=g.granted_by) for g in looked_after],
    )


async def _services(db: AsyncSession) -> dict[int, ServiceRef]:
    """The member services (they are few: one query), to name the ones the export mentions."""
    found = (await db.execute(select(Service.id, Service.client_id, Service.name))).all()
    return {sid: ServiceRef(client_id=cid, name=name) for sid, cid, name in found}
