"""How sure the hub is of who signed in, as services read it in the ID token: ``amr``
(RFC 8176 method references) and ``acr`` (the hub's two levels), and when an authorization
request needs a second factor first (step-up). Pure functions of stored strings.

A session stores its methods as words: ``pwd`` (a password), ``otp`` (a code from an
authenticator app, or a recovery code), ``hwk`` / ``swk`` (a passkey bound to its device, or
a synced one: proof of possession of a hardware- or software-secured key) and ``user`` (the
passkey verified the person: a PIN, a fingerprint, a face).

- A password only: ``amr`` ``["pwd"]``, ``acr`` :data:`PASSWORD`.
- A password and a code: ``["pwd", "otp", "mfa"]``, :data:`MFA`.
- A password and a passkey: ``["pwd", "hwk", "mfa"]`` (``"user"`` too when it verified the
  person), :data:`MFA`.
- A passkey alone, which must verify the person: ``["hwk", "user"]`` or ``["swk", "user"]``,
  :data:`MFA` (something you have, unlocked by something you know or are). Never ``pwd``.

A service that sends ``acr_values`` naming :data:`MFA` and not :data:`PASSWORD` gets an
:data:`MFA` session: a password-only session is asked for its second factor first; a request
that lists both, or neither, takes the session as it is. (``acr_values`` are voluntary claims
in OIDC Core 3.1.2.1; the hub honours this one.)"""

from __future__ import annotations

PASSWORD = "urn:onesignin:acr:password"
MFA = "urn:onesignin:acr:mfa"
#: Discovery's ``acr_values_supported``: exactly these.
ACR_VALUES: tuple[str, ...] = (PASSWORD, MFA)
#: The session's ``amr`` when the second factor was given too.
WITH_CODE = "pwd otp"
#: Methods that prove a key is held (a passkey).
KEYS = frozenset({"hwk", "swk"})
#: Methods that may follow a password as its second factor.
SECOND_FACTORS = frozenset({"otp"}) | KEYS


def with_passkey(session_amr: str, passkey_methods: str) -> str:
    """A session's methods after a passkey's (``hwk user`` and so on) joined them."""
    return " ".join(dict.fromkeys([*session_amr.split(), *passkey_methods.split()]))


def has_second_factor(session_amr: str) -> bool:
    methods = set(session_amr.split())
    return "pwd" in methods and bool(methods & SECOND_FACTORS)


def multi_factor(session_amr: str) -> bool:
    """A password and a second factor, or a passkey that verified the person."""
    methods = set(session_amr.split())
    return has_second_factor(session_amr) or (bool(methods & KEYS) and "user" in methods)


def amr(session_amr: str) -> list[str]:
    """The ID token's ``amr`` for a session's stored methods (``mfa`` when a password was
    joined by a second factor)."""
    methods = session_amr.split() or ["pwd"]
    return [*methods, "mfa"] if has_second_factor(session_amr) else methods


def acr(session_amr: str) -> str:
    return MFA if multi_factor(session_amr) else PASSWORD


def wants_mfa(acr_values: str | None) -> bool:
    requested = (acr_values or "").split()
    return MFA in requested and PASSWORD not in requested


def needs_second_factor(acr_values: str | None, session_amr: str) -> bool:
    """Whether the request must wait for the session's second factor (step-up)."""
    return wants_mfa(acr_values) and not multi_factor(session_amr)
