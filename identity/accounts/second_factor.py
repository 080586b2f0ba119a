"""A person's second factor: a TOTP authenticator app (RFC 6238) and ten single-use recovery
codes. (Staff have their own TOTP in ``identity.support.staff``; the secret's sealing and URI are
shared with it.)

- :func:`start_enrolment` gives the person a fresh secret (sealed for their account) to scan;
  it is not asked for at sign-in until :func:`confirm_enrolment` sees a right code from it,
  which also returns the recovery codes, shown once: only their digests are kept.
- :func:`check` accepts a current code (the step before or after too, for clock drift) newer
  than the last accepted one, so a code cannot be used twice, or an unused recovery code, which
  is then spent. The factor's row is locked and the step written conditionally, so of two
  simultaneous uses of one code exactly one succeeds. Throttling wrong codes is the caller's (``identity.accounts.throttle``).
- :func:`remove` deletes the factor (the caller has checked the password).

Functions take the caller's session and never commit."""

from __future__ import annotations

import datetime as dt
import hmac
from email.message import EmailMessage
import re
import secrets
from dataclasses import dataclass
from typing import Literal

import pyotp
from cryptography.exceptions import InvalidTag
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import SecondFactor, utcnow
from identity.i18n import in_their_language, lazy_gettext
from identity.mail import build_message, if_not_you
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.ssf import emit
from identity.ssf.events import Initiator
from identity.tokens import digest

ISSUER_NAME = "One Sign In"

RECOVERY_CODES = 10
#: How long a right password waits for its second factor.
PENDING_SECONDS = 300
#: A recovery code: three groups of four from an alphabet without look-alikes (60 bits).
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_CODE = re.compile(r"[0-9]{6}")
Used = Literal["otp", "recovery"]


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str


def seal_totp(cipher: KeyCipher, secret: str, account_id: int) -> str:
    """The secret as stored: sealed for this account's second factor only (not a staff column)."""
    return cipher.seal({"totp_secret": secret}, purpose=f"person-totp:{account_id}")


def open_totp(cipher: KeyCipher, sealed: str, account_id: int) -> str:
    return str(cipher.open(sealed, purpose=f"person-totp:{account_id}")["totp_secret"])


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER_NAME)


@dataclass(frozen=True)
class Pending:
    """A right password waiting for its second factor: whose, and whether the browser's session
    stays (``step_up``: a service asked for two steps of a password-only session) or a new one
    starts."""

    account_id: int
    step_up: bool = False


def pending(cipher: KeyCipher, account_id: int, *, step_up: bool = False, now: dt.datetime | None = None) -> str:
    """The wait for the second factor, sealed (the browser keeps it)."""
    value = {"account": account_id, "at": int((now or utcnow()).timestamp()), "step_up": step_up}
    return cipher.seal(value, purpose="second-factor-due")


def pending_account(cipher: KeyCipher, sealed: str | None, now: dt.datetime | None = None) -> Pending | None:
    """The wait for a second factor, while it runs."""
    if not sealed:
        return None
    try:
        opened = cipher.open(sealed, purpose="second-factor-due")
        age = (now or utcnow()).timestamp() - int(opened["at"])
        found = Pending(int(opened["account"]), bool(opened.get("step_up")))
    except (InvalidTag, ValueError, KeyError, TypeError):  # tampered, truncated or sealed under another key
        return None
    return found if 0 <= age <= PENDING_SECONDS else None


def _recovery_code() -> str:
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(4)) for _ in range(3))


def _normal_recovery(code: str) -> str:
    return re.sub(r"[\s-]", "", code.lower())


def new_recovery_codes() -> tuple[list[str], list[str]]:
    """Fresh recovery codes, and the digests that are kept of them."""
    codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
    return codes, [digest(_normal_recovery(c)) for c in codes]


async def find(db: AsyncSession, account_id: int, *, lock: bool = False) -> SecondFactor | None:
    query = select(SecondFactor).where(SecondFactor.account_id == account_id)
    return await db.scalar(query.with_for_update() if lock else query)


async def enrolled(db: AsyncSession, account_id: int) -> bool:
    """Whether sign-in asks this account for a second factor."""
    found = await db.scalar(select(SecondFactor.confirmed_at).where(SecondFactor.account_id == account_id))
    return found is not None


async def start_enrolment(db: AsyncSession, cipher: KeyCipher, account_id: int, email: str) -> Enrolment | None:
    """The secret being set up (a new one unless one is already waiting), or None when the
    account has a confirmed factor already."""
    factor = await find(db, account_id, lock=True)
    if factor is not None and factor.confirmed_at is not None:
        return None
    if factor is None:
        secret = pyotp.random_base32()
        db.add(SecondFactor(account_id=account_id, totp_secret=seal_totp(cipher, secret, account_id), recovery_codes=[]))
        await db.flush()
    else:
        secret = open_totp(cipher, factor.totp_secret, account_id)
    return Enrolment(secret, totp_uri(secret, email))


async def confirm_enrolment(db: AsyncSession, cipher: KeyCipher, account_id: int, code: str, now: dt.datetime | None = None) -> list[str] | None:
    """Turn the factor on once a right code from the secret being set up is given: the recovery
    codes to show once, or None (a wrong code, or nothing being set up)."""
    factor = await find(db, account_id, lock=True)
    if factor is None or factor.confirmed_at is not None:
        return None
    step = _matching_step(cipher, factor, code, now)
    if step is None:
        return None
    had_two_factors = await emit.two_factors(db, account_id)
    codes, digests = new_recovery_codes()
    factor.last_step, factor.recovery_codes, factor.confirmed_at = step, digests, now or utcnow()
    await emit.credential_changed(db, account_id, "app", "create", had_two_factors=had_two_factors)
    return codes


def _matching_step(cipher: KeyCipher, factor: SecondFactor, code: str, now: dt.datetime | None) -> int | None:
    code = re.sub(r"\s", "", code)
    if not _CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(open_totp(cipher, factor.totp_secret, factor.account_id))
    current = totp.timecode(now or dt.datetime.now(dt.UTC))
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code) and (factor.last_step is None or step > factor.last_step):
            return step
    return None


async def check(db: AsyncSession, cipher: KeyCipher, account_id: int, code: str, now: dt.datetime | None = None) -> Used | None:
    """Which factor the code is (``otp`` or ``recovery``), now used up, or None when it is wrong,
    already used, or the account has no confirmed factor."""
    factor = await find(db, account_id, lock=True)
    if factor is None or factor.confirmed_at is None:
        return None
    if (step := _matching_step(cipher, factor, code, now)) is not None:
        taken = await db.execute(
            update(SecondFactor)
            .where(SecondFactor.id == factor.id, (SecondFactor.last_step.is_(None)) | (SecondFactor.last_step < step))
            .values(last_step=step)
        )
        return "otp" if taken.rowcount == 1 else None  # type: ignore[attr-defined]
    wanted = digest(_normal_recovery(code))
    if not any(hmac.compare_digest(wanted, d) for d in factor.recovery_codes):
        return None
    # The row is locked (on SQLite the transaction writes alone): a simultaneous use of the
    # same code waits and then no longer finds it.
    factor.recovery_codes = [d for d in factor.recovery_codes if d != wanted]
    return "recovery"


async def new_recovery(db: AsyncSession, account_id: int) -> list[str] | None:
    """Replace the recovery codes (the old ones stop working): the new ones to show once."""
    factor = await find(db, account_id, lock=True)
    if factor is None or factor.confirmed_at is None:
        return None
    codes, factor.recovery_codes = new_recovery_codes()
    return codes


async def recovery_left(db: AsyncSession, account_id: int) -> int:
    factor = await find(db, account_id)
    return len(factor.recovery_codes) if factor is not None else 0


async def remove(db: AsyncSession, account_id: int, *, initiator: Initiator = "user") -> bool:
    """Remove the authenticator app (confirmed or being set up); services hear of a confirmed one."""
    had_two_factors = await emit.two_factors(db, account_id)
    confirmed = await db.scalar(select(SecondFactor.id).where(SecondFactor.account_id == account_id, SecondFactor.confirmed_at.is_not(None)))
    removed = await db.execute(delete(SecondFactor).where(SecondFactor.account_id == account_id))
    if confirmed is not None:
        await emit.credential_changed(db, account_id, "app", "delete", had_two_factors=had_two_factors, initiator=initiator)
    return bool(removed.rowcount)  # type: ignore[attr-defined]


#: What a notice says happened, by change.
CHANGES = {
    "on": (
        lazy_gettext("Two-step sign-in is on"),
        lazy_gettext(
            "Two-step sign-in was turned on for your One Sign In account: signing in now also asks for a code from your authenticator app."
        ),
    ),
    "off": (
        lazy_gettext("Two-step sign-in is off"),
        lazy_gettext("Two-step sign-in was turned off for your One Sign In account: signing in now needs only your password."),
    ),
    "recovery": (
        lazy_gettext("New recovery codes"),
        lazy_gettext("New recovery codes were made for your One Sign In account; the earlier ones no longer work."),
    ),
}


@in_their_language
def notice(settings: Settings, to: str, change: str) -> EmailMessage:
    """A change to the second factor, told to the account's own address (it carries nothing typed)."""
    subject, said = CHANGES[change]
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=str(subject),
        text=str(said) + "\n\n" + if_not_you(settings),
    )
