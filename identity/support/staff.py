"""Staff members (agents and supervisors) and their second factor, for the CLI and the console.

A staff member is a hub account with a role and a TOTP secret (RFC 6238), encrypted with the
hub's key cipher. The secret leaves the hub as an ``otpauth://`` URI, for the staff member's
authenticator app: printed by ``onesignin agents add`` (the operator hands it over), or, for a
role granted in the console, shown to the staff member alone at their first console sign-in,
after their password (a supervisor never holds both factors). A code sent at a console sign-in
is checked by :func:`check_code`, which counts, locks out and records it in the audit trail.
These functions take the caller's session and never commit."""

from __future__ import annotations

import datetime as dt
import hmac
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import pyotp
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity import admin
from identity.accounts.passwords import PasswordHasher, check_password
from identity.accounts.store import find_by_email, find_by_sub
from identity.db.models import Account, AccountStatus, ConsoleSession, StaffMember, utcnow
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.support import audit
from identity.support.session import Role
from identity.support.words import _
from schemas.account import normalize_email

ISSUER_NAME = "One Sign In"
ROLES: tuple[str, ...] = get_args(Role)
#: Wrong codes a half-signed-in session may send before it is ended; also the wrong codes in a
#: row (across sessions) after which the staff member's codes are refused for a while.
MAX_TOTP_FAILURES = 5
#: The first lock-out after MAX_TOTP_FAILURES wrong codes in a row; each further wrong code
#: doubles it, up to TOTP_LOCK_MAX.
TOTP_LOCK = dt.timedelta(minutes=15)
TOTP_LOCK_MAX = dt.timedelta(days=1)
_CODE = re.compile(r"[0-9]{6}")


class StaffError(admin.InvalidInput):
    """A staff operation that cannot be done, explained for the operator. Those the console's
    staff pages can meet are in the console's language (English at the command line)."""


@dataclass(frozen=True)
class NewStaff:
    sub: str
    email: str
    role: str
    #: The authenticator app's ``otpauth://`` URI: shown once, never stored in the clear.
    totp_uri: str


def _role(role: str) -> str:
    if role not in ROLES:
        raise StaffError(f"--role must be one of: {', '.join(ROLES)}")
    return role


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)


def seal_totp(cipher: KeyCipher, secret: str, account_id: int) -> str:
    """A staff member's TOTP secret as stored: sealed for that account only."""
    return cipher.seal({"totp_secret": secret}, purpose=f"totp-secret:{account_id}")


def open_totp(cipher: KeyCipher, sealed: str, account_id: int) -> str:
    return str(cipher.open(sealed, purpose=f"totp-secret:{account_id}")["totp_secret"])


class Passwords(Protocol):
    """Password hashing as the caller runs it: on a worker thread in the hub, inline in the CLI."""

    @property
    def hasher(self) -> PasswordHasher: ...

    async def hash(self, password: str) -> str: ...

    async def verify(self, stored_hash: str | None, password: str) -> bool: ...


@dataclass(frozen=True)
class InlinePasswords:
    """For the CLI: hash on the calling thread (nothing else is waiting on its event loop)."""

    hasher: PasswordHasher

    async def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        if stored_hash is None:
            self.hasher.dummy_verify(password)
            return False
        return self.hasher.verify(stored_hash, password)


async def add_staff(
    db: AsyncSession,
    settings: Settings,
    passwords: Passwords,
    cipher: KeyCipher,
    *,
    email: str,
    password: str,
    role: str,
    created_by: str | None,
    breached: bool = False,
) -> NewStaff:
    """Make the account ``email`` staff with a fresh TOTP secret, creating the account (verified:
    the operator vouches for the address) under the usual password policy when there is none
    (``breached``: the Pwned Passwords API, asked before the transaction, knows the password).
    An existing account's password must be given, and match. A disabled staff member is enabled
    again with a new secret; an enabled one is refused."""
    _role(role)
    try:
        normalized = normalize_email(email)
    except ValueError as exc:
        raise StaffError(f"--email: {exc}") from None
    account = await find_by_email(db, normalized)
    if account is None:
        if reason := check_password(password, context=[normalized], breached=breached):
            raise StaffError(f"--password: {reason}")
        created = await admin.add_user(
            db, settings, passwords.hasher, email=normalized, password=password, verified=True, password_hash=await passwords.hash(password)
        )
        account = await find_by_sub(db, created.sub)
        assert account is not None
    elif not await passwords.verify(account.password_hash, password):
        raise StaffError("--password does not match the existing account's password")
    elif account.status != AccountStatus.ACTIVE:
        raise StaffError("the account is not active")
    staff = await db.scalar(select(StaffMember).where(StaffMember.account_id == account.id).with_for_update())
    if staff is not None and staff.disabled_at is None:
        raise StaffError(f"{normalized} is already staff ({staff.role}): change the role or disable it")
    secret = pyotp.random_base32()
    # The operator hands the URI over: the second factor counts as enrolled from now.
    _make_staff(db, cipher, staff, account, role, secret, created_by=created_by, confirmed=True)
    await db.flush()
    return NewStaff(account.sub, account.email, role, totp_uri(secret, account.email))


def _make_staff(
    db: AsyncSession, cipher: KeyCipher, staff: StaffMember | None, account: Account, role: str, secret: str, *, created_by: str | None, confirmed: bool
) -> None:
    now = utcnow()
    values: dict[str, Any] = {
        "role": role,
        "totp_secret": seal_totp(cipher, secret, account.id),
        "totp_last_step": None,
        "totp_failures": 0,
        "totp_locked_until": None,
        "totp_confirmed_at": now if confirmed else None,
        "disabled_at": None,
        "created_by": created_by,
        "created_at": now,
    }
    if staff is None:
        db.add(StaffMember(account_id=account.id, **values))
    else:
        for name, value in values.items():
            setattr(staff, name, value)


async def grant_role(
    db: AsyncSession, cipher: KeyCipher, *, email: str, role: str, created_by: str | None, only_roles: tuple[str, ...] | None = None
) -> tuple[str, str]:
    """The console's way to add staff: give an existing, active hub account a role (no password is
    typed, none is created). Its TOTP is not enrolled: the staff member sees their own setup URI at
    their first console sign-in. A disabled staff member is enabled again and enrols anew; an
    enabled one is refused. With ``only_roles``, only one of those roles is given (and a disabled
    staff member of another role is not taken over). Returns (sub, normalised email)."""
    _role(role)
    if only_roles is not None and role not in only_roles:
        raise StaffError(_("role must be one of: %(roles)s", roles=", ".join(only_roles)))
    try:
        normalized = normalize_email(email)
    except ValueError as exc:
        # Translators: the email address given was refused; the reason follows.
        raise StaffError(_("email: %(problem)s", problem=str(exc))) from None
    account = await find_by_email(db, normalized)
    if account is None or account.status != AccountStatus.ACTIVE:
        raise StaffError(_("no active hub account has the address %(email)s: the person registers at the hub first", email=normalized))
    staff = await db.scalar(select(StaffMember).where(StaffMember.account_id == account.id).with_for_update())
    if staff is not None and staff.disabled_at is None:
        raise StaffError(_("%(email)s is already staff (%(role)s): change the role or disable it", email=normalized, role=staff.role))
    if staff is not None:
        _managed(staff, only_roles)
    # A secret nobody sees: replaced by a fresh one when the staff member enrols.
    _make_staff(db, cipher, staff, account, role, pyotp.random_base32(), created_by=created_by, confirmed=False)
    await db.flush()
    return account.sub, account.email


def new_enrolment(cipher: KeyCipher, staff: StaffMember, email: str) -> str:
    """A fresh TOTP secret for a staff member who has not enrolled yet (set on ``staff``, to be
    committed by the caller); its ``otpauth://`` URI, to show to them alone."""
    assert staff.totp_confirmed_at is None
    secret = pyotp.random_base32()
    staff.totp_secret, staff.totp_last_step = seal_totp(cipher, secret, staff.account_id), None
    return totp_uri(secret, email)


def enrolment_uri(cipher: KeyCipher, staff: StaffMember, email: str) -> str:
    """The ``otpauth://`` URI of an enrolment under way (the secret made at this sign-in)."""
    return totp_uri(open_totp(cipher, staff.totp_secret, staff.account_id), email)


def lock_for(failures: int) -> dt.timedelta | None:
    """How long a staff member's codes are refused after ``failures`` wrong ones in a row."""
    if failures < MAX_TOTP_FAILURES:
        return None
    return min(TOTP_LOCK * 2 ** min(failures - MAX_TOTP_FAILURES, 20), TOTP_LOCK_MAX)


async def listing(db: AsyncSession) -> list[dict[str, Any]]:
    """Every staff member: who, role, since when, by whom, and whether disabled."""
    rows = await db.execute(
        select(StaffMember, Account.sub, Account.email).join(Account, Account.id == StaffMember.account_id).order_by(Account.email)
    )
    return [
        {
            "sub": sub,
            "email": email,
            "role": staff.role,
            "created_at": staff.created_at.isoformat(),
            "created_by": staff.created_by,
            "disabled_at": staff.disabled_at.isoformat() if staff.disabled_at else None,
        }
        for staff, sub, email in rows
    ]


async def _find(db: AsyncSession, *, email: str | None = None, sub: str | None = None) -> tuple[StaffMember, Account]:
    query = select(StaffMember, Account).join(Account, Account.id == StaffMember.account_id)
    if email is not None:
        try:
            query = query.where(Account.email == normalize_email(email))
        except ValueError:
            raise StaffError(f"no staff member with the email address {email!r}") from None
    else:
        query = query.where(Account.sub == sub)
    row = (await db.execute(query.with_for_update(of=StaffMember))).first()
    if row is None and email is not None:
        raise StaffError(f"no staff member with the email address {email!r}")
    if row is None:
        raise StaffError(_("no staff member with that sub"))
    return row[0], row[1]


def _managed(staff: StaffMember, only_roles: tuple[str, ...] | None) -> None:
    if only_roles is not None and staff.role not in only_roles:
        raise StaffError(_("that staff member is %(role)s: an admin changes them", role=staff.role))


async def change_role(
    db: AsyncSession, role: str, *, email: str | None = None, sub: str | None = None, only_roles: tuple[str, ...] | None = None
) -> StaffMember:
    """Change a staff member's role; with ``only_roles``, only between those roles (a supervisor
    manages agents and supervisors, never an admin or a service owner)."""
    staff, _account = await _find(db, email=email, sub=sub)
    _managed(staff, only_roles)
    if only_roles is not None and role not in only_roles:
        raise StaffError(_("role must be one of: %(roles)s", roles=", ".join(only_roles)))
    staff.role = _role(role)
    await db.flush()
    return staff


async def disable(db: AsyncSession, *, email: str | None = None, sub: str | None = None, only_roles: tuple[str, ...] | None = None) -> StaffMember:
    """Disable a staff member and end their console sessions at once (with ``only_roles``: only
    one with one of those roles)."""
    staff, _account = await _find(db, email=email, sub=sub)
    _managed(staff, only_roles)
    now = utcnow()
    if staff.disabled_at is None:
        staff.disabled_at = now
    await db.execute(
        update(ConsoleSession).where(ConsoleSession.staff_id == staff.id, ConsoleSession.ended_at.is_(None)).values(ended_at=now)
    )
    await db.flush()
    return staff


def accepted_step(cipher: KeyCipher, staff: StaffMember, code: str, now: dt.datetime | None = None) -> int | None:
    """The time step a six-digit code was made for, if it is right now (one step of clock drift
    either way, as pyotp's ``valid_window=1``) and newer than the last accepted one (a code is
    used once); None otherwise."""
    code = code.strip().replace(" ", "")
    if not _CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(open_totp(cipher, staff.totp_secret, staff.account_id))
    current = totp.timecode(now or dt.datetime.now(dt.UTC))
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code) and (staff.totp_last_step is None or step > staff.totp_last_step):
            return step
    return None


#: What a code sent at a console sign-in's second step did: ``accepted`` (the attempt ended, to
#: be replaced by an active session), ``wrong`` (the counts stand; ask again), ``ended`` (this
#: attempt had its wrong codes), ``locked`` (the staff member's codes are refused for a while,
#: the attempt ended), ``gone`` (the attempt ended meanwhile: sign in again).
CodeResult = Literal["accepted", "wrong", "ended", "locked", "gone"]


@dataclass(frozen=True)
class CodeChecked:
    result: CodeResult
    #: The staff member as the check left them (``accepted`` and ``wrong``).
    staff: StaffMember | None = None


async def check_code(
    db: AsyncSession, cipher: KeyCipher, *, session_id: int, staff_id: int, sub: str, role: str, code: str, now: dt.datetime
) -> CodeChecked:
    """Check a code sent by the half-signed-in console session ``session_id`` of the staff member
    ``staff_id`` (``sub``, ``role``), and record what it did in the audit trail. Every code sent
    counts as wrong before it is checked, one statement each: of any number of parallel
    submissions, at most MAX_TOTP_FAILURES per session get a code checked, and none while the
    staff member is locked out (the row locks queue them; each re-reads the count). A right
    code, taken once, resets the counts, confirms an enrolment and ends the attempt: the caller
    adds the active session that replaces it (no fixation)."""
    tried = await db.scalar(
        update(ConsoleSession)
        .where(
            ConsoleSession.id == session_id,
            ConsoleSession.stage == "totp",
            ConsoleSession.ended_at.is_(None),
            ConsoleSession.totp_failures < MAX_TOTP_FAILURES,
        )
        .values(totp_failures=ConsoleSession.totp_failures + 1)
        .returning(ConsoleSession.totp_failures)
    )
    if tried is None:
        await _end_console_session(db, session_id, now)
        return CodeChecked("ended")
    failures = await db.scalar(
        update(StaffMember)
        .where(
            StaffMember.id == staff_id,
            StaffMember.disabled_at.is_(None),
            or_(StaffMember.totp_locked_until.is_(None), StaffMember.totp_locked_until <= now),
        )
        .values(totp_failures=StaffMember.totp_failures + 1)
        .returning(StaffMember.totp_failures)
    )
    if failures is None:
        await _end_console_session(db, session_id, now)
        audit.record(db, actor_kind="agent", actor=sub, action="console.totp_locked", detail={"refused": True})
        return CodeChecked("locked")
    staff = await db.get(StaffMember, staff_id, populate_existing=True)
    assert staff is not None
    step = accepted_step(cipher, staff, code)
    if step is not None:
        # Taken atomically: of two requests with one code, only one moves the step on.
        taken = await db.execute(
            update(StaffMember)
            .where(StaffMember.id == staff.id, or_(StaffMember.totp_last_step.is_(None), StaffMember.totp_last_step < step))
            .values(totp_last_step=step)
        )
        step = step if taken.rowcount == 1 else None
    if step is not None:
        return await _accept(db, staff, session_id=session_id, sub=sub, role=role, now=now)
    # A wrong (or spent) code: the counts stand.
    audit.record(db, actor_kind="agent", actor=sub, action="console.totp_failed", detail={"failures": failures})
    lock = lock_for(failures)
    if lock is not None:
        until = now + lock
        await db.execute(update(StaffMember).where(StaffMember.id == staff.id).values(totp_locked_until=until))
        audit.record(db, actor_kind="agent", actor=sub, action="console.totp_locked", detail={"failures": failures, "until": until.isoformat()})
    if lock is not None or tried >= MAX_TOTP_FAILURES:
        await _end_console_session(db, session_id, now)
        return CodeChecked("locked" if lock is not None else "ended")
    return CodeChecked("wrong", staff)


async def _accept(db: AsyncSession, staff: StaffMember, *, session_id: int, sub: str, role: str, now: dt.datetime) -> CodeChecked:
    # The attempt becomes a session only if it is still live; nothing else may end it now.
    promoted = await db.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.stage == "totp", ConsoleSession.ended_at.is_(None))
        .values(ended_at=now, totp_failures=0)
    )
    if promoted.rowcount != 1:
        return CodeChecked("gone")
    enrolled = staff.totp_confirmed_at is None
    await db.execute(
        update(StaffMember)
        .where(StaffMember.id == staff.id)
        .values(totp_failures=0, totp_locked_until=None, **({"totp_confirmed_at": now} if enrolled else {}))
    )
    if enrolled:
        audit.record(db, actor_kind="agent", actor=sub, action="console.totp_enrolled")
    audit.record(db, actor_kind="agent", actor=sub, action="console.signed_in", detail={"role": role})
    return CodeChecked("accepted", staff)


async def sign_out(db: AsyncSession, *, session_id: int, sub: str, signed_in: bool, now: dt.datetime) -> None:
    """End the console session ``session_id`` of the staff member ``sub``; the end of a session
    past its second factor (``signed_in``) is recorded in the audit trail."""
    await _end_console_session(db, session_id, now)
    if signed_in:
        audit.record(db, actor_kind="agent", actor=sub, action="console.signed_out")


async def _end_console_session(db: AsyncSession, session_id: int, now: dt.datetime) -> None:
    await db.execute(update(ConsoleSession).where(ConsoleSession.id == session_id).values(ended_at=now))


async def ids_by_sub(db: AsyncSession) -> dict[str, int]:
    """Each staff member's row id, by their account's ``sub``."""
    return dict((await db.execute(select(Account.sub, StaffMember.id).join(StaffMember, StaffMember.account_id == Account.id))).all())
