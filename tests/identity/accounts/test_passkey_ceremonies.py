"""A passkey ceremony's challenge: sealed in the browser for one purpose, short-lived, answered
once (a replay is refused, on SQLite and Postgres), forgotten by the cleanup once it would have
expired anyway; and the relying party, which browsers allow only on a host name."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from identity.accounts import passkeys
from identity.db.cleanup import purge_expired
from identity.db.engine import create_sessionmaker
from identity.db.models import SpentChallenge, utcnow
from identity.sealing import KeyCipher

CIPHER = KeyCipher("k" * 40)


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        ("http://localhost:8000", passkeys.RelyingParty("localhost", "http://localhost:8000")),
        ("https://id.example.com", passkeys.RelyingParty("id.example.com", "https://id.example.com")),
        ("https://id.example.com:8443/", passkeys.RelyingParty("id.example.com", "https://id.example.com:8443")),
        ("http://127.0.0.1:8000", None),
        ("http://[::1]:8000", None),
    ],
)
def test_the_relying_party_is_the_issuers_host_never_an_ip_address(issuer: str, expected: passkeys.RelyingParty | None) -> None:
    assert passkeys.relying_party(issuer) == expected


def test_a_ceremony_opens_for_its_purpose_while_it_runs() -> None:
    now = utcnow()
    started, sealed = passkeys.begin(CIPHER, "register", 7, handle="aGFuZGxl", now=now)
    again = passkeys.opened(CIPHER, sealed, "register", now=now + dt.timedelta(seconds=passkeys.CEREMONY_SECONDS - 1))
    assert again == started and again.account_id == 7 and again.handle == "aGFuZGxl" and len(again.challenge) == 32


def test_an_expired_ceremony_is_refused() -> None:
    now = utcnow()
    _, sealed = passkeys.begin(CIPHER, "sign-in", now=now)
    assert passkeys.opened(CIPHER, sealed, "sign-in", now=now + dt.timedelta(seconds=passkeys.CEREMONY_SECONDS + 1)) is None
    # Nor one that claims to start in the future.
    assert passkeys.opened(CIPHER, sealed, "sign-in", now=now - dt.timedelta(seconds=5)) is None


def test_a_ceremony_serves_only_its_purpose_and_cannot_be_altered_or_forged() -> None:
    _, sealed = passkeys.begin(CIPHER, "sign-in")
    assert passkeys.opened(CIPHER, sealed, "second-factor") is None
    assert passkeys.opened(CIPHER, sealed, "register") is None
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    assert passkeys.opened(CIPHER, tampered, "sign-in") is None
    assert passkeys.opened(KeyCipher("x" * 40), sealed, "sign-in") is None
    assert passkeys.opened(CIPHER, None, "sign-in") is None
    assert passkeys.opened(CIPHER, "not sealed at all", "sign-in") is None
    # Sealed for another purpose of the hub (a second factor's wait, say): not a ceremony.
    assert passkeys.opened(CIPHER, CIPHER.seal({"account": 1, "at": 0}, purpose="second-factor-due"), "sign-in") is None


def test_each_ceremony_has_its_own_challenge() -> None:
    assert len({passkeys.begin(CIPHER, "sign-in")[0].challenge for _ in range(50)}) == 50


async def test_a_challenge_is_answered_once_then_forgotten_when_it_would_have_expired(database_url: str) -> None:
    engine = create_async_engine(database_url)
    sessions = create_sessionmaker(engine)
    try:
        now = utcnow()
        started, _ = passkeys.begin(CIPHER, "sign-in", now=now)
        other, _ = passkeys.begin(CIPHER, "sign-in", now=now)
        async with sessions.begin() as db:
            assert await passkeys.spend(db, started) is True
        async with sessions.begin() as db:
            assert await passkeys.spend(db, started) is False  # a replay
            assert await passkeys.spend(db, other) is True
        async with sessions.begin() as db:
            kept = await purge_expired(db, throttle_window=900, now=now + dt.timedelta(seconds=passkeys.CEREMONY_SECONDS - 1))
            assert kept["spent_challenges"] == 0
            gone = await purge_expired(db, throttle_window=900, now=now + dt.timedelta(seconds=passkeys.CEREMONY_SECONDS + 1))
            assert gone["spent_challenges"] == 2
            assert await db.scalar(select(func.count()).select_from(SpentChallenge)) == 0
    finally:
        await engine.dispose()


def test_a_passkeys_name_is_one_printable_line() -> None:
    assert passkeys.clean_name("  Work\tlaptop\n\u202e ") == "Work laptop"
    assert passkeys.clean_name("") == "Passkey"
    assert len(passkeys.clean_name("x" * 500)) == passkeys.NAME_LENGTH
