"""The event types the hub transmits and their payloads (CAEP 1.0, RISC 1.0, SSF 1.0).

Each :class:`Event` names its type URI and carries its payload; ``emit`` turns it into one SET
per service that asked for it. Times are whole seconds since the epoch (``event_timestamp``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"

SESSION_REVOKED = CAEP + "session-revoked"
CREDENTIAL_CHANGE = CAEP + "credential-change"
ASSURANCE_LEVEL_CHANGE = CAEP + "assurance-level-change"
ACCOUNT_DISABLED = RISC + "account-disabled"
ACCOUNT_ENABLED = RISC + "account-enabled"
ACCOUNT_PURGED = RISC + "account-purged"
IDENTIFIER_CHANGED = RISC + "identifier-changed"
VERIFICATION = SSF + "verification"

#: What a stream may ask for (``events_supported``). Verification events are sent whatever
#: was asked, when the receiver asks for one.
SUPPORTED = (
    SESSION_REVOKED,
    CREDENTIAL_CHANGE,
    ASSURANCE_LEVEL_CHANGE,
    ACCOUNT_DISABLED,
    ACCOUNT_ENABLED,
    ACCOUNT_PURGED,
    IDENTIFIER_CHANGED,
)

#: The acr a person can reach (``identity.oidc.assurance``): the levels of an
#: assurance-level-change, in the ``custom`` namespace of CAEP.
ONE_FACTOR = "urn:onesignin:acr:password"
TWO_FACTORS = "urn:onesignin:acr:mfa"

Initiator = Literal["user", "admin", "policy", "system"]
CredentialType = Literal["password", "app", "fido2-platform", "fido2-roaming"]
ChangeType = Literal["create", "update", "delete", "revoke"]


def short_name(uri: str) -> str:
    """The type's last segment (``session-revoked``): what a notice row's ``event_type`` keeps."""
    return uri.rsplit("/", 1)[-1]


def delivered(requested: list[str]) -> list[str]:
    """SSF 1.0 section 8.1.1: ``events_delivered`` is what was requested and is supported."""
    return [uri for uri in SUPPORTED if uri in requested]


def _ts(at: dt.datetime) -> int:
    return int(at.timestamp())


@dataclass(frozen=True)
class Event:
    uri: str
    payload: dict[str, Any] = field(default_factory=dict)
    #: Only services that may see the person's email hear of it (an email address changed).
    needs_email: bool = False
    #: The subject, when not the person's ``iss_sub``: the old address of an identifier-changed.
    email_subject: str | None = None

    @property
    def name(self) -> str:
        return short_name(self.uri)


def session_revoked(at: dt.datetime, initiator: Initiator = "user") -> Event:
    return Event(SESSION_REVOKED, {"event_timestamp": _ts(at), "initiating_entity": initiator})


def credential_change(at: dt.datetime, credential_type: CredentialType, change_type: ChangeType, initiator: Initiator = "user") -> Event:
    return Event(
        CREDENTIAL_CHANGE,
        {"credential_type": credential_type, "change_type": change_type, "event_timestamp": _ts(at), "initiating_entity": initiator},
    )


def assurance_level_change(at: dt.datetime, *, two_factors: bool, initiator: Initiator = "user") -> Event:
    """The strongest sign-in the person can now give went up (a first second factor) or down
    (the last one removed)."""
    current, previous = (TWO_FACTORS, ONE_FACTOR) if two_factors else (ONE_FACTOR, TWO_FACTORS)
    return Event(
        ASSURANCE_LEVEL_CHANGE,
        {
            "namespace": "custom",
            "current_level": current,
            "previous_level": previous,
            "change_direction": "increase" if two_factors else "decrease",
            "event_timestamp": _ts(at),
            "initiating_entity": initiator,
        },
    )


def account_disabled(reason: str | None = None) -> Event:
    return Event(ACCOUNT_DISABLED, {"reason": reason} if reason else {})


def account_enabled() -> Event:
    return Event(ACCOUNT_ENABLED)


def account_purged() -> Event:
    return Event(ACCOUNT_PURGED)


def identifier_changed(old_email: str, new_email: str) -> Event:
    """RISC 2.6: the subject is the identifier as it was, ``new-value`` what it is now."""
    return Event(IDENTIFIER_CHANGED, {"new-value": new_email}, needs_email=True, email_subject=old_email)


def verification(state: str | None) -> Event:
    return Event(VERIFICATION, {"state": state} if state else {})
