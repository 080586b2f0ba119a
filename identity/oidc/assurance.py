"""How sure the hub is of who signed in, as services read it in the ID token: ``amr``
(RFC 8176 method references) and ``acr`` (the hub's two levels), and when an authorization
request needs a second factor first (step-up). Pure functions of stored strings.

- A password only: ``amr`` ``["pwd"]``, ``acr`` :data:`PASSWORD`.
- A password and a code (an authenticator app or a recovery code): ``amr``
  ``["pwd", "otp", "mfa"]``, ``acr`` :data:`MFA`.

A service that sends ``acr_values`` naming :data:`MFA` and not :data:`PASSWORD` gets a session
with a second factor: a password-only session is asked for the code first (the ID token's
``acr`` is then :data:`MFA`); a request that lists both, or neither, takes the session as it is.
(``acr_values`` are voluntary claims in OIDC Core 3.1.2.1; the hub honours this one.)"""

from __future__ import annotations

PASSWORD = "urn:onesignin:acr:password"
MFA = "urn:onesignin:acr:mfa"
#: Discovery's ``acr_values_supported``: exactly these.
ACR_VALUES: tuple[str, ...] = (PASSWORD, MFA)
#: The session's ``amr`` when the second factor was given too.
WITH_CODE = "pwd otp"


def has_second_factor(session_amr: str) -> bool:
    return "otp" in session_amr.split()


def amr(session_amr: str) -> list[str]:
    """The ID token's ``amr`` for a session's stored methods."""
    methods = session_amr.split() or ["pwd"]
    return [*methods, "mfa"] if len(methods) > 1 else methods


def acr(session_amr: str) -> str:
    return MFA if has_second_factor(session_amr) else PASSWORD


def wants_mfa(acr_values: str | None) -> bool:
    requested = (acr_values or "").split()
    return MFA in requested and PASSWORD not in requested


def needs_second_factor(acr_values: str | None, session_amr: str) -> bool:
    """Whether the request must wait for the session's second factor (step-up)."""
    return wants_mfa(acr_values) and not has_second_factor(session_amr)
