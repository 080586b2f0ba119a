"""People's passkeys: WebAuthn Level 3 discoverable credentials, checked with ``webauthn``
(py_webauthn). A passkey signs a person in without a password (it must then verify the person:
a PIN, a fingerprint, a face), or serves as the second step after a password.

- The relying party is the issuer's host (:func:`relying_party`); browsers refuse WebAuthn on an
  IP address, so on such an issuer there are no passkeys (development uses ``localhost``).
- A ceremony's challenge travels sealed in the browser's cookie (:func:`begin`), for one purpose
  and :data:`CEREMONY_SECONDS`; :func:`opened` refuses it after that, and :func:`spend` refuses
  one already answered (a ``spent_challenges`` row, kept until it would have expired anyway).
- :func:`register` keeps a new credential (nothing secret: its id, public key, counter,
  transports, name); :func:`authenticate` checks an assertion and returns whose it is and how
  (``amr``). A signature counter that did not grow (when either count is non-zero) may mean a
  cloned authenticator (WebAuthn §6.1.1): the ceremony fails and is audited.

Functions take the caller's session and never commit."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import bytes_to_base64url
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from identity.db.models import Account, AuditRecord, Passkey, SpentChallenge, utcnow
from identity.db.upsert import ensure_row
from identity.i18n import _, in_their_language, lazy_gettext, ngettext
from identity.mail import build_message, if_not_you
from identity.sealing import KeyCipher
from identity.settings import Settings
from identity.ssf import emit
from identity.ssf.events import CredentialType, Initiator
from identity.tokens import digest

RP_NAME = "One Sign In"
#: How long a ceremony's challenge may be answered (the browser is told a little less).
CEREMONY_SECONDS = 300
TIMEOUT_MS = 240_000
#: Passkeys one account may hold.
MAX_PASSKEYS = 20
NAME_LENGTH = 64
Purpose = Literal["register", "sign-in", "second-factor"]
_B64URL = re.compile(r"[A-Za-z0-9_-]{1,1400}")


class PasskeyRefused(Exception):
    """A passkey ceremony that did not succeed; ``public`` is what the person is told."""

    def __init__(self, public: Any, detail: str = "", *, unknown_credential: str | None = None) -> None:
        super().__init__(detail or str(public))
        self.public = public
        #: A credential id the browser offered that the hub does not know (base64url): the page
        #: tells the browser (WebAuthn L3 ``signalUnknownCredential``), which may then drop it.
        self.unknown_credential = unknown_credential


EXPIRED = lazy_gettext("That took too long, or was started in another tab or browser. Try again.")
UNKNOWN = lazy_gettext(
    "This passkey is not known here: it may have been removed from your account. Sign in another way, or choose another passkey."
)
NOT_CHECKED = lazy_gettext("Your passkey's answer could not be checked. Try again, or sign in another way.")
NOT_VERIFIED = lazy_gettext(
    "Your passkey did not check that it was you (with a PIN, fingerprint or face). Try again, or sign in with your password."
)
CLONED = lazy_gettext(
    "This passkey's signature counter went backwards, which can mean it was copied. It was not accepted: sign in "
    "another way, then remove it from your account page if you are unsure of it."
)


@dataclass(frozen=True)
class RelyingParty:
    id: str
    origin: str


def relying_party(issuer: str) -> RelyingParty | None:
    """The WebAuthn relying party of an issuer: its host and origin, or None when the host is an
    IP address (browsers refuse WebAuthn there)."""
    parts = urlsplit(issuer)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return RelyingParty(host, f"{parts.scheme}://{parts.netloc}") if host else None
    return None


# -- the ceremony's challenge, sealed in the browser ------------------------------------------


@dataclass(frozen=True)
class Ceremony:
    purpose: Purpose
    challenge: bytes
    #: The account it is for (registration, a second factor), or None (a sign-in: anyone's).
    account_id: int | None
    at: int
    #: The WebAuthn user handle a registration gives the new credential (base64url).
    handle: str | None = None


def begin(
    cipher: KeyCipher, purpose: Purpose, account_id: int | None = None, *, handle: str | None = None, now: dt.datetime | None = None
) -> tuple[Ceremony, str]:
    """A fresh challenge, and its sealed note for the browser's cookie."""
    ceremony = Ceremony(purpose, secrets.token_bytes(32), account_id, int((now or utcnow()).timestamp()), handle)
    value = {"p": purpose, "c": bytes_to_base64url(ceremony.challenge), "a": account_id, "t": ceremony.at, "h": handle}
    return ceremony, cipher.seal(value, purpose="webauthn-ceremony")


def opened(cipher: KeyCipher, sealed: str | None, purpose: Purpose, now: dt.datetime | None = None) -> Ceremony | None:
    """The ceremony the cookie names, while it runs and only for ``purpose``."""
    if not sealed:
        return None
    try:
        value = cipher.open(sealed, purpose="webauthn-ceremony")
        ceremony = Ceremony(value["p"], _b64decode(value["c"]), value["a"], int(value["t"]), value.get("h"))
    except (InvalidTag, ValueError, KeyError, TypeError):
        return None
    age = (now or utcnow()).timestamp() - ceremony.at
    return ceremony if ceremony.purpose == purpose and 0 <= age <= CEREMONY_SECONDS else None


async def spend(db: AsyncSession, ceremony: Ceremony) -> bool:
    """Mark the challenge answered: True the first time only."""
    expires = dt.datetime.fromtimestamp(ceremony.at + CEREMONY_SECONDS, dt.UTC)
    return await ensure_row(db, SpentChallenge, challenge_hash=digest(bytes_to_base64url(ceremony.challenge)), expires_at=expires)


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


# -- the person's passkeys --------------------------------------------------------------------


async def listed(db: AsyncSession, account_id: int) -> list[Passkey]:
    return list(await db.scalars(select(Passkey).where(Passkey.account_id == account_id).order_by(Passkey.created_at, Passkey.id)))


async def count(db: AsyncSession, account_id: int) -> int:
    return int(await db.scalar(select(func.count()).select_from(Passkey).where(Passkey.account_id == account_id)) or 0)


def _descriptors(keys: list[Passkey]) -> list[PublicKeyCredentialDescriptor]:
    known = {t.value for t in AuthenticatorTransport}
    return [
        PublicKeyCredentialDescriptor(id=_b64decode(k.credential_id), transports=[AuthenticatorTransport(t) for t in k.transports if t in known])
        for k in keys
    ]


async def user_handle(db: AsyncSession, account_id: int) -> str:
    """The account's WebAuthn user handle: its passkeys' (one per account), or a new random one
    (not the ``sub`` services see, nor anything about the person)."""
    found = await db.scalar(select(Passkey.user_handle).where(Passkey.account_id == account_id).limit(1))
    return found or bytes_to_base64url(secrets.token_bytes(32))


async def registration_options(db: AsyncSession, rp: RelyingParty, ceremony: Ceremony, account: Account) -> str:
    """The options for ``navigator.credentials.create`` (JSON): a discoverable credential,
    user verification preferred, none of the account's passkeys again."""
    assert ceremony.handle is not None
    keys = await listed(db, account.id)
    options = generate_registration_options(
        rp_id=rp.id,
        rp_name=RP_NAME,
        user_id=_b64decode(ceremony.handle),
        user_name=account.email,
        user_display_name=" ".join(p for p in (account.given_name, account.family_name) if p) or account.email,
        challenge=ceremony.challenge,
        timeout=TIMEOUT_MS,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED, user_verification=UserVerificationRequirement.PREFERRED
        ),
        exclude_credentials=_descriptors(keys),
    )
    return options_to_json(options)


def sign_in_options(rp: RelyingParty, ceremony: Ceremony) -> str:
    """Options for ``navigator.credentials.get`` without naming anyone (discoverable
    credentials, the browser's own account chooser or autofill): the passkey alone signs in, so
    it must verify the person."""
    return options_to_json(
        generate_authentication_options(
            rp_id=rp.id, challenge=ceremony.challenge, timeout=TIMEOUT_MS, user_verification=UserVerificationRequirement.REQUIRED
        )
    )


async def second_factor_options(db: AsyncSession, rp: RelyingParty, ceremony: Ceremony, account_id: int) -> str:
    """Options for a passkey as the step after the password: the account's own passkeys."""
    return options_to_json(
        generate_authentication_options(
            rp_id=rp.id,
            challenge=ceremony.challenge,
            timeout=TIMEOUT_MS,
            allow_credentials=_descriptors(await listed(db, account_id)),
            user_verification=UserVerificationRequirement.PREFERRED,
        )
    )


def _parsed(credential: str) -> dict[str, Any]:
    try:
        value = json.loads(credential)
    except ValueError:
        raise PasskeyRefused(NOT_CHECKED, "credential is not JSON") from None
    if not isinstance(value, dict):
        raise PasskeyRefused(NOT_CHECKED, "credential is not an object")
    return value


def clean_name(name: str) -> str:
    """The person's name for a passkey: printable, one line, at most :data:`NAME_LENGTH`."""
    cleaned = " ".join("".join(c for c in " ".join(name.split()) if c.isprintable()).split())[:NAME_LENGTH]
    return cleaned or "Passkey"


async def register(
    db: AsyncSession, rp: RelyingParty, ceremony: Ceremony, account: Account, credential: str, name: str
) -> Passkey:
    """Keep the credential the browser created for this ceremony, under the person's name for it."""
    if ceremony.account_id != account.id or not ceremony.handle:
        raise PasskeyRefused(EXPIRED, "ceremony for another account")
    value = _parsed(credential)
    try:
        verified = verify_registration_response(
            credential=value, expected_challenge=ceremony.challenge, expected_rp_id=rp.id, expected_origin=rp.origin
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRefused(NOT_CHECKED, f"registration: {exc}") from None
    props = (value.get("clientExtensionResults") or {}).get("credProps") or {}
    if props.get("rk") is False:
        raise PasskeyRefused(
            _("Your browser made a passkey that cannot sign you in without your email address. Try another device or security key."),
            "not discoverable",
        )
    if not await spend(db, ceremony):
        raise PasskeyRefused(EXPIRED, "registration challenge replayed")
    if await count(db, account.id) >= MAX_PASSKEYS:
        raise PasskeyRefused(
            ngettext(
                "You have %(num)d passkey already. Remove one you no longer use first.",
                "You have %(num)d passkeys already. Remove one you no longer use first.",
                MAX_PASSKEYS,
            )
        )
    credential_id = bytes_to_base64url(verified.credential_id)
    if await db.scalar(select(Passkey.id).where(Passkey.credential_id == credential_id)) is not None:
        raise PasskeyRefused(_("This passkey is already on an account here."), "credential id taken")
    keys = await listed(db, account.id)
    had_two_factors = bool(keys) or await emit.two_factors(db, account.id)
    transports = (value.get("response") or {}).get("transports") or []
    row = Passkey(
        account_id=account.id,
        credential_id=credential_id,
        user_handle=keys[0].user_handle if keys else ceremony.handle,
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        transports=[str(t)[:32] for t in transports if isinstance(t, str)][:8],
        backup_eligible=verified.credential_device_type == "multi_device",
        aaguid=verified.aaguid,
        name=clean_name(name),
    )
    db.add(row)
    db.add(AuditRecord(at=utcnow(), actor_kind="person", actor=account.sub, account_sub=account.sub, action="account.passkey_added"))
    await db.flush()
    await emit.credential_changed(db, account.id, _kind(row), "create", had_two_factors=had_two_factors)
    return row


def _kind(key: Passkey) -> CredentialType:
    """CAEP's credential type: a passkey that can be synced between devices, or one the
    browser says is built in, is the platform's; a security key is roaming."""
    return "fido2-platform" if key.backup_eligible or "internal" in (key.transports or []) else "fido2-roaming"


def _user_handle(value: dict[str, Any]) -> str:
    handle = (value.get("response") or {}).get("userHandle")
    return handle if isinstance(handle, str) else ""


@dataclass(frozen=True)
class Authenticated:
    account_id: int
    #: The session's methods: ``hwk`` or ``swk``, and ``user`` when the person was verified.
    methods: str
    passkey_id: int


async def authenticate(db: AsyncSession, rp: RelyingParty, ceremony: Ceremony, credential: str, now: dt.datetime | None = None) -> Authenticated:
    """Check an assertion for this ceremony: a sign-in (any account's discoverable passkey, which
    must verify the person) or a second factor (the ceremony's account's passkeys only)."""
    value = _parsed(credential)
    credential_id = value.get("rawId") or value.get("id")
    if not isinstance(credential_id, str) or len(credential_id) > 1400:
        raise PasskeyRefused(NOT_CHECKED, "no credential id")
    key = await db.scalar(select(Passkey).where(Passkey.credential_id == credential_id).with_for_update())
    if key is None or (ceremony.account_id is not None and key.account_id != ceremony.account_id):
        unknown = credential_id if key is None and _B64URL.fullmatch(credential_id) else None
        raise PasskeyRefused(UNKNOWN, "unknown credential", unknown_credential=unknown)
    handle = _user_handle(value)
    if ceremony.purpose == "sign-in" and handle != key.user_handle:
        # A discoverable sign-in names the user: it must be the passkey's owner (WebAuthn §7.2 step 6).
        raise PasskeyRefused(UNKNOWN, "user handle does not match")
    try:
        verified = verify_authentication_response(
            credential=value,
            expected_challenge=ceremony.challenge,
            expected_rp_id=rp.id,
            expected_origin=rp.origin,
            credential_public_key=_b64decode(key.public_key),
            credential_current_sign_count=0,  # the counter rule is applied below, once the signature is good
            require_user_verification=ceremony.purpose == "sign-in",
        )
    except InvalidAuthenticationResponse as exc:
        if "User verification is required" in str(exc):
            raise PasskeyRefused(NOT_VERIFIED, str(exc)) from None
        raise PasskeyRefused(NOT_CHECKED, f"authentication: {exc}") from None
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise PasskeyRefused(NOT_CHECKED, f"authentication: {exc}") from None
    if not await spend(db, ceremony):
        raise PasskeyRefused(EXPIRED, "authentication challenge replayed")
    if (verified.new_sign_count or key.sign_count) and verified.new_sign_count <= key.sign_count:
        account = await db.get(Account, key.account_id)
        sub = account.sub if account is not None else None
        db.add(AuditRecord(at=utcnow(), actor_kind="hub", account_sub=sub, action="account.passkey_counter_regressed", detail={"passkey": key.id}))
        raise PasskeyRefused(CLONED, f"sign count {verified.new_sign_count} <= {key.sign_count}")
    key.sign_count, key.last_used_at = verified.new_sign_count, now or utcnow()
    methods = ["swk" if key.backup_eligible else "hwk"] + (["user"] if verified.user_verified else [])
    return Authenticated(key.account_id, " ".join(methods), key.id)


async def remove(db: AsyncSession, account: Account, passkey_id: int) -> Passkey | None:
    """Remove one of the account's passkeys: the row removed, or None."""
    key = await db.scalar(select(Passkey).where(Passkey.id == passkey_id, Passkey.account_id == account.id))
    if key is None:
        return None
    had_two_factors = await emit.two_factors(db, account.id)
    await db.execute(delete(Passkey).where(Passkey.id == key.id))
    db.add(AuditRecord(at=utcnow(), actor_kind="person", actor=account.sub, account_sub=account.sub, action="account.passkey_removed"))
    await emit.credential_changed(db, account.id, _kind(key), "delete", had_two_factors=had_two_factors)
    return key


async def remove_all(db: AsyncSession, account_id: int, *, initiator: Initiator = "admin") -> int:
    """Remove every passkey of the account (an operator helping someone who lost them): how many."""
    keys = await listed(db, account_id)
    had_two_factors = bool(keys) or await emit.two_factors(db, account_id)
    removed = await db.execute(delete(Passkey).where(Passkey.account_id == account_id))
    for kind in sorted({_kind(k) for k in keys}):
        await emit.credential_changed(db, account_id, kind, "delete", had_two_factors=had_two_factors, initiator=initiator)
        had_two_factors = await emit.two_factors(db, account_id)
    return int(removed.rowcount or 0)  # type: ignore[attr-defined]


@in_their_language
def notice(settings: Settings, to: str, change: Literal["added", "removed"], name: str) -> EmailMessage:
    """A passkey added to or removed from the account, told to the account's own address."""
    subject = _("A passkey was added") if change == "added" else _("A passkey was removed")
    said = (
        _("A passkey named \"%(name)s\" was added to your One Sign In account: it can now sign you in.", name=name)
        if change == "added"
        else _("The passkey named \"%(name)s\" was removed from your One Sign In account: it no longer signs you in.", name=name)
    )
    return build_message(
        sender=settings.mail_from,
        to=to,
        subject=subject,
        text=said + "\n\n" + if_not_you(settings),
    )
