"""Stored codes and tokens as authlib's mixins expect them, and the synchronous data
functions the grants call. They run inside ``AsyncSession.run_sync`` and reach the
synchronous session through :data:`current_db`; they never commit."""

from __future__ import annotations

import datetime as dt
from contextvars import ContextVar
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from identity.db.models import Account, AuthorizationCode, Consent, Service, Token, utcnow
from identity.oidc.client import ServiceClient
from identity.tokens import digest

current_db: ContextVar[Session] = ContextVar("current_db")


def db() -> Session:
    return current_db.get()


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

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass
class IssuedToken(TokenMixin):
    """A stored token, as presented: either its access or its refresh half."""

    row: Token
    client: ServiceClient | None
    kind: str  # "access_token" or "refresh_token"
    #: True for a self-contained client_credentials token (its row is not stored).
    stateless: bool = False
    #: A refresh token's scope: the grant's original scope, which a refresh asking for less
    #: narrows for the new access token only (RFC 6749 section 6). None for access tokens.
    refresh_scope: str | None = None

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
        if self.row.revoked_at is not None:
            return True
        return self.kind == "refresh_token" and self.row.refresh_used_at is not None

    def get_user(self) -> Account | None:
        if self.row.account_id is None:
            return None
        return db().get(Account, self.row.account_id)

    def get_client(self) -> ServiceClient | None:
        return self.client


def find_stored_token(token_string: str, hint: str | None = None) -> IssuedToken | None:
    hashed = digest(token_string)
    kinds = ["refresh_token", "access_token"] if hint == "refresh_token" else ["access_token", "refresh_token"]
    for kind in kinds:
        column = Token.access_hash if kind == "access_token" else Token.refresh_hash
        row = db().scalar(select(Token).where(column == hashed))
        if row is not None:
            service = db().get(Service, row.service_id)
            client = ServiceClient.from_row(service) if service else None
            if kind == "access_token":
                return IssuedToken(row, client, kind)
            return IssuedToken(row, client, kind, refresh_scope=granted_scope(row.grant_id))
    return None


def granted_scope(grant_id: str) -> str:
    """The scope of a grant's first token: what the person granted (refreshes only narrow it)."""
    return db().scalar(select(Token.scope).where(Token.grant_id == grant_id).order_by(Token.id).limit(1)) or ""


def revoke_grant(grant_id: str, now: dt.datetime | None = None) -> int:
    """Revoke every token of one grant (a refresh-token family). Returns how many."""
    result = db().execute(
        update(Token).where(Token.grant_id == grant_id, Token.revoked_at.is_(None)).values(revoked_at=now or utcnow())
    )
    return result.rowcount or 0


def active_consent(account_id: int, service_id: int) -> Consent | None:
    return db().scalar(
        select(Consent).where(
            Consent.account_id == account_id, Consent.service_id == service_id, Consent.revoked_at.is_(None)
        )
    )
