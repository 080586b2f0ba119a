"""Children's accounts. Under the age of digital consent a guardian must consent; until one does
the account is not shared with any service (``status = "pending_guardian"``).

When an account turns out to be a child's without that consent (a rectified date of birth, from
any channel: :func:`identity.accounts.store.update_details` calls :func:`rectified`), the hub at
once stops sharing it: it is restricted (``restricted_at``, ``delete_after`` = now + grace),
pending profile deliveries are dropped, and every linked service is told (``account.restricted``).
A guardian's consent lifts it (``account.restriction_lifted`` and a fresh snapshot to each linked
service); past ``delete_after`` without consent the retention purge erases the account. Everything
happens in the caller's transaction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity import notices, outbox
from identity.ssf import emit, events
from identity.db.models import Account, AccountStatus, AuditRecord, Delivery, Link, Service
from identity.settings import Settings
from schemas.events import (
    AccountRestricted,
    AccountRestrictedData,
    AccountRestrictionLifted,
    AccountRestrictionLiftedData,
    LinkCreated,
)

REASON = "child_without_guardian_consent"


class OnlyThePerson(Exception):
    """A member service or support tried to set a date of birth that would make an adult a
    child. Restricting someone's account everywhere is too much for anyone but the person to set
    off: it is refused (the caller's transaction writes nothing), and the person can set it on
    their own account page, where what follows is explained."""

    field = "birthdate"
    public = (
        "This date of birth would make the person younger than the age of digital consent. Only the person "
        "can set such a date, on their own account page at the hub."
    )


@dataclass(frozen=True)
class ChildPolicy:
    """The configured age of digital consent and grace period (``Settings``)."""

    age_of_consent: int = Settings.model_fields["age_of_digital_consent"].default
    grace_days: int = Settings.model_fields["child_grace_days"].default

    @classmethod
    def of(cls, settings: Settings) -> ChildPolicy:
        return cls(age_of_consent=settings.age_of_digital_consent, grace_days=settings.child_grace_days)


def age_on(birthdate: dt.date, today: dt.date) -> int:
    return today.year - birthdate.year - ((today.month, today.day) < (birthdate.month, birthdate.day))


def is_child(birthdate: dt.date | None, age_of_consent: int, today: dt.date | None = None) -> bool:
    return birthdate is not None and age_on(birthdate, today or dt.date.today()) < age_of_consent


def check_proxy_birthdate(account: Account, birthdate: dt.date | None, policy: ChildPolicy, today: dt.date) -> None:
    """Raise :class:`OnlyThePerson` when someone other than the person sets a date of birth that
    turns an adult (or a person of unknown age) into a child without a guardian's consent."""
    if is_child(birthdate, policy.age_of_consent, today) and not is_child(account.birthdate, policy.age_of_consent, today):
        if account.guardian_consent_at is None:
            raise OnlyThePerson()


async def rectified(db: AsyncSession, account: Account, policy: ChildPolicy, now: dt.datetime) -> None:
    """The date of birth changed: restrict a child without a guardian's consent; lift the
    restriction of someone who, by the corrected date, is no child."""
    if is_child(account.birthdate, policy.age_of_consent, now.date()):
        if account.guardian_consent_at is None and account.restricted_at is None:
            await restrict(db, account, policy, now)
    elif account.status == AccountStatus.PENDING_GUARDIAN:
        await lift(db, account, now, by_guardian=False)


async def _linked_services(db: AsyncSession, account_id: int) -> list[Service]:
    return list(
        (
            await db.scalars(
                select(Service)
                .join(Link, Link.service_id == Service.id)
                .where(Link.account_id == account_id, Link.is_active)
                .order_by(Service.id)
            )
        ).all()
    )


async def restrict(db: AsyncSession, account: Account, policy: ChildPolicy, now: dt.datetime) -> None:
    """Stop sharing the account, tell every linked service, start the grace period."""
    account.status = AccountStatus.PENDING_GUARDIAN
    account.restricted_at = now
    account.delete_after = now + dt.timedelta(days=policy.grace_days)
    d = Delivery.__table__.c
    # Whatever was waiting to go out stays here (a delivery already in flight cannot be recalled).
    await db.execute(
        update(Delivery.__table__)
        .where(d.account_id == account.id, d.wanted_version > d.delivered_version)
        .values(delivered_version=d.wanted_version, changed=0, snapshot=False, first_pending_at=None, generation=d.generation + 1)
    )
    stamp = notices.timestamp(now)
    for service in await _linked_services(db, account.id):
        notice = AccountRestricted(
            id=notices.new_notice_id(),
            timestamp=stamp,
            data=AccountRestrictedData(sub=account.sub, reason=REASON, restricted_at=now, delete_after=account.delete_after),
        )
        notices.add(db, service, account.id, account.sub, notice)
    # Shared Signals: the account is off at every linked service until a guardian consents.
    await emit.emit(db, account.id, events.account_disabled(), now=now)
    db.add(AuditRecord(at=now, actor_kind="hub", account_sub=account.sub, action="account.restricted", reason=REASON))
    await db.flush()


async def lift(db: AsyncSession, account: Account, now: dt.datetime, *, by_guardian: bool) -> None:
    """A guardian consented (or the corrected date of birth is an adult's): the account is shared
    again. Services that were told of a restriction hear that it ended and get a fresh snapshot."""
    was_restricted = account.restricted_at is not None
    account.status = AccountStatus.ACTIVE
    if by_guardian:
        account.guardian_consent_at = now
    account.restricted_at = None
    account.delete_after = None
    if was_restricted:
        await emit.emit(db, account.id, events.account_enabled(), now=now)
        stamp = notices.timestamp(now)
        for service in await _linked_services(db, account.id):
            notice = AccountRestrictionLifted(
                id=notices.new_notice_id(), timestamp=stamp, data=AccountRestrictionLiftedData(sub=account.sub, lifted_at=now)
            )
            notices.add(db, service, account.id, account.sub, notice)
            # The fan-out answers a link event with a snapshot of what the service may see.
            outbox.add(
                db,
                LinkCreated(id=outbox.new_event_id(), sub=account.sub, client_id=service.client_id, version=account.version, occurred_at=now),
            )
        reason = "guardian_consent" if by_guardian else "birthdate_rectified"
        db.add(AuditRecord(at=now, actor_kind="hub", account_sub=account.sub, action="account.restriction_lifted", reason=reason))
    await db.flush()
