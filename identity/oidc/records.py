"""Stored codes and tokens as authlib's mixins expect them, and the synchronous data
functions the grants call. They run inside ``AsyncSession.run_sync`` and reach the
synchronous session through :data:`current_db`; they never commit."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin
from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from identity.db.models import Account, AuthorizationCode, Consent, Token, utcnow
from identity.oidc import assurance
from identity.oidc.client import ServiceClient
from identity.tokens import digest

current_db: ContextVar[Session] = ContextVar("current_db")


def db() -> Session:
    return current_db.get()


class NeedsDatabase(Exception):
    """Raised where a run without a session (:data:`NO_SESSION`) reaches for the database: the
    caller runs the same entry point again with one."""


class _NoSession:
    def __getattr__(self, name: str) -> object:
        raise NeedsDatabase(name)


#: Stands for the session in a run that must not need one (what it reads is in memory).
NO_SESSION: Session = _NoSession()  # type: ignore[assignment]


@dataclass(slots=True)
class ServiceTokenRow:
    """What a self-contained service token says, shaped as the :class:`Token` rows it stands in
    for (it is never stored): built per check, so a plain object, not a mapped one (nor a frozen
    one, whose every field is set through ``object.__setattr__``); nothing changes it."""

    grant_id: str
    service_id: int
    scope: str
    issued_at: dt.datetime
    access_expires_at: dt.datetime
    revoked_at: dt.datetime | None
    dpop_jkt: str | None
    account_id: None = None
    grant_scope: str | None = None
    refresh_expires_at: None = None
    refresh_used_at: None = None
    amr: None = None
    auth_time: None = None
    sid: None = None


@dataclass
class IssuedCode(AuthorizationCodeMixin):
    row: AuthorizationCode

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return int(self.row.auth_time.timestamp())

    def get_acr(self) -> str:
        return assurance.acr(self.row.amr)

    def get_amr(self) -> list[str]:
        return assurance.amr(self.row.amr)


@dataclass
class IssuedToken(TokenMixin):
    """A stored token, as presented: either its access or its refresh half."""

    row: Token | ServiceTokenRow
    client: ServiceClient | None
    kind: str  # "access_token" or "refresh_token"
    #: True for a self-contained client_credentials token (its row is not stored).
    stateless: bool = False
    #: A refresh token's scope: the grant's original scope, which a refresh asking for less
    #: narrows for the new access token only (RFC 6749 section 6). None for access tokens.
    refresh_scope: str | None = None
    #: Whether the person's consent to the token's service still stands.
    consented: bool = False
    #: The person, when loaded with the token (the session's identity map holds it only weakly).
    account: Account | None = None

    def check_client(self, client: ServiceClient) -> bool:
        return self.row.service_id == client.id

    def get_scope(self) -> str:
        return self.refresh_scope if self.refresh_scope is not None else self.row.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.row.access_expires_at - utcnow()).total_seconds()))

    def get_expires_at(self) -> dt.datetime:
        if self.kind == "refresh_token" and self.row.refresh_expires_at:
            return self.row.refresh_expires_at
        return self.row.access_expires_at

    def is_expired(self) -> bool:
        return self.get_expires_at() <= utcnow()

    def is_revoked(self) -> bool:
        if self.row.revoked_at is not None or (self.client is not None and self.client.disabled):
            # A disabled service's tokens are refused while it stays disabled.
            return True
        return self.kind == "refresh_token" and self.row.refresh_used_at is not None

    def get_user(self) -> Account | None:
        if self.row.account_id is None:
            return None
        if self.account is not None:
            return self.account
        return db().get(Account, self.row.account_id)

    def get_client(self) -> ServiceClient | None:
        return self.client


def find_stored_token(
    token_string: str,
    clients: Callable[[int], ServiceClient | None],
    hint: str | None = None,
    *,
    for_update: bool = False,
) -> IssuedToken | None:
    """A stored token by its secret, with its person and whether their consent still stands
    (one query; the person comes with it, so ``get_user`` costs nothing). With
    ``for_update`` the token's row stays locked until the transaction ends, so two concurrent
    uses of one refresh token are serialised and the second is seen as a reuse."""
    hashed = digest(token_string)
    kinds = ["refresh_token", "access_token"] if hint == "refresh_token" else ["access_token", "refresh_token"]
    for kind in kinds:
        column = Token.access_hash if kind == "access_token" else Token.refresh_hash
        query = (
            select(Token, Account, Consent.id)
            .outerjoin(Account, Account.id == Token.account_id)
            .outerjoin(
                Consent,
                and_(
                    Consent.account_id == Token.account_id,
                    Consent.service_id == Token.service_id,
                    Consent.revoked_at.is_(None),
                ),
            )
            .where(column == hashed)
        )
        if for_update:
            query = query.with_for_update(of=Token)
        found = db().execute(query).first()
        if found is not None:
            row, account, consent_id = found
            refresh_scope = row.grant_scope if kind == "refresh_token" else None
            return IssuedToken(
                row, clients(row.service_id), kind, refresh_scope=refresh_scope, consented=consent_id is not None, account=account
            )
    return None


def revoke_grant(grant_id: str, now: dt.datetime | None = None) -> int:
    """Revoke every token of one grant (a refresh-token family). Returns how many."""
    result = db().execute(
        update(Token).where(Token.grant_id == grant_id, Token.revoked_at.is_(None)).values(revoked_at=now or utcnow())
    )
    return result.rowcount or 0
