"""Helping a locked-out person without seeing a secret: a password-reset link mailed to the
person (the agent never sees it), and removing their second factor (authenticator app and
passkeys) once a supervisor approves. A removal is a request first (``second_factor_removals``);
a *different* staff member with the supervisor role approves or refuses it, and never for their
own account. Each step writes its audit record in the caller's transaction and returns the mail
that tells the person what happened, by whom (customer support), and what to do if they did not
ask."""

from __future__ import annotations

from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from identity.accounts import factors, links
from identity.i18n import _, in_their_language
from identity.db.models import Account, SecondFactorRemoval, utcnow
from identity.mail import build_message
from identity.settings import Settings
from identity.support import audit
from identity.support.session import Agent


class Refused(Exception):
    """A step support may not take; ``key`` names the console's fixed message."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


async def send_reset(db: AsyncSession, settings: Settings, agent: Agent, account: Account, reason: str) -> EmailMessage:
    """Issue the same single-use reset link "forgot password" sends, addressed to the person."""
    secret = await links.issue(db, account, "reset_password", account.email)
    audit.record(
        db, actor_kind="agent", actor=agent.sub, action="support.password_reset_sent", account_sub=account.sub, reason=reason, detail={"outcome": "sent"}
    )
    return reset_by_support_message(settings, account.email, secret, locale=account.locale)


async def request_removal(db: AsyncSession, settings: Settings, agent: Agent, account: Account, reason: str) -> EmailMessage:
    """Open a removal request (one pending per person) and say so to the person."""
    if not await factors.enrolled(db, account.id):
        raise Refused("no_factor")
    pending = await db.scalar(
        select(SecondFactorRemoval.id).where(SecondFactorRemoval.account_id == account.id, SecondFactorRemoval.status == "pending")
    )
    if pending is not None:
        raise Refused("removal_pending")
    row = SecondFactorRemoval(account_id=account.id, status="pending", reason=reason, requested_by=agent.sub, requested_at=utcnow())
    try:
        async with db.begin_nested():  # another agent's request made meanwhile wins
            db.add(row)
            await db.flush()
    except IntegrityError:
        raise Refused("removal_pending") from None
    audit.record(
        db,
        actor_kind="agent",
        actor=agent.sub,
        action="support.second_factor_removal_requested",
        account_sub=account.sub,
        reason=reason,
        detail={"request": row.id, "outcome": "pending"},
    )
    return removal_requested_message(settings, account.email, locale=account.locale)


async def pending(db: AsyncSession) -> list[tuple[SecondFactorRemoval, Account, str | None]]:
    """The waiting requests, oldest first: each with its person and the requester's address."""
    requester = aliased(Account)
    rows = await db.execute(
        select(SecondFactorRemoval, Account, requester.email)
        .join(Account, Account.id == SecondFactorRemoval.account_id)
        .outerjoin(requester, requester.sub == SecondFactorRemoval.requested_by)
        .where(SecondFactorRemoval.status == "pending")
        .order_by(SecondFactorRemoval.requested_at, SecondFactorRemoval.id)
    )
    return [(r, a, e) for r, a, e in rows]


async def decide(db: AsyncSession, settings: Settings, supervisor: Agent, request_id: int, *, approve: bool) -> EmailMessage | None:
    """Approve (remove the factor) or refuse a pending request. Least privilege: only a
    supervisor, never the staff member who asked, never for the supervisor's own account."""
    if not supervisor.is_supervisor:
        raise Refused("not_supervisor")
    row = await db.scalar(select(SecondFactorRemoval).where(SecondFactorRemoval.id == request_id).with_for_update())
    if row is None or row.status != "pending":
        raise Refused("not_pending")
    if row.requested_by == supervisor.sub:
        raise Refused("own_request")
    if row.account_id == supervisor.account_id:
        raise Refused("own_account")
    account = await db.get(Account, row.account_id)
    assert account is not None  # the request goes with the account (ON DELETE CASCADE)
    row.decided_by, row.decided_at = supervisor.sub, utcnow()
    row.status = "approved" if approve else "refused"
    detail: dict[str, object] = {"request": row.id, "requested_by": row.requested_by, "outcome": "refused"}
    if approve:
        removed = await factors.remove_all(db, account.id)
        detail |= {"outcome": "removed", "authenticator_app": removed.authenticator_app, "passkeys": removed.passkeys}
    audit.record(
        db,
        actor_kind="agent",
        actor=supervisor.sub,
        action="support.second_factor_removed" if approve else "support.second_factor_removal_refused",
        account_sub=account.sub,
        reason=row.reason,
        detail=detail,
    )
    return removed_message(settings, account.email, locale=account.locale) if approve else None


def _not_you(settings: Settings) -> str:
    return _(
        "If you did not ask customer support for this, someone may be trying to take over your account: "
        "reset your password at %(reset)s and reply to this message so we can help.\n",
        reset=settings.issuer + "/reset-password",
    )


@in_their_language
def reset_by_support_message(settings: Settings, to: str, secret: str) -> EmailMessage:
    url = f"{settings.issuer}/reset-password/confirm?token={secret}"
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Customer support sent you a password reset link"),
        text=_(
            "Customer support sent this link so that you can choose a new password for your One Sign In account "
            "(nobody at support sees it):\n\n%(url)s\n\n"
            "The link works for 1 hour. If you did not ask customer support for this, ignore this message: your "
            "password stays as it is; and reply to it so we know.\n",
            url=url,
        ),
    )


@in_their_language
def removal_requested_message(settings: Settings, to: str) -> EmailMessage:
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Customer support asked to remove your second factor"),
        text=_(
            "Customer support asked to remove the second factor of your One Sign In account (your authenticator "
            "app and passkeys), so that you can sign in with your password alone. A supervisor checks the request "
            "before anything is removed.\n\n"
        )
        + _not_you(settings),
    )


@in_their_language
def removed_message(settings: Settings, to: str) -> EmailMessage:
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=_("Your second factor was removed"),
        text=_(
            "Customer support removed the second factor of your One Sign In account (your authenticator app and "
            "passkeys), with a supervisor's approval. You now sign in with your password alone: set up a new second "
            "factor on your account page, %(account)s.\n\n",
            account=settings.issuer + "/account",
        )
        + _not_you(settings),
    )
