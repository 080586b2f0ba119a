"""Signing keys and their rotation.

For each algorithm (RS256 always, ES256 too) one key signs at a time. A successor is created
``key_publish_lead`` seconds before the current key stops signing, so relying parties see it in
the JWKS before any token carries its ``kid``; a retired key stays published until every token it
signed has expired. Private keys live only in the database, encrypted with AES-256-GCM under a
key derived from the hub's secret key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db import dialect
from identity.db.locks import AdvisoryLock, take
from identity.db.models import SigningKey, utcnow
from identity.sealing import KeyCipher
from identity.tokens import new_secret

ALGORITHMS = ("RS256", "ES256")


def _generate(alg: str, kid: str) -> RSAKey | ECKey:
    params = {"kid": kid, "alg": alg, "use": "sig"}
    if alg == "RS256":
        return RSAKey.generate_key(2048, parameters=params, private=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=params, private=True)
    raise ValueError(f"unsupported algorithm {alg}")


@dataclass
class KeyRing:
    """The keys as loaded from the database: what to publish and what signs now."""

    published: list[dict[str, Any]] = field(default_factory=list)
    signing: dict[str, RSAKey | ECKey] = field(default_factory=dict)
    _upcoming: list[tuple[dt.datetime, str, RSAKey | ECKey]] = field(default_factory=list)
    _retire: dict[str, dt.datetime] = field(default_factory=dict)

    def signing_key(self, alg: str, now: dt.datetime | None = None) -> RSAKey | ECKey:
        now = now or utcnow()
        for starts, key_alg, key in self._upcoming:
            if key_alg == alg and starts <= now:
                self.signing[alg] = key
        # Drop only what was just promoted: another algorithm's due successor must wait for its own call.
        self._upcoming = [u for u in self._upcoming if u[1] != alg or u[0] > now]
        try:
            return self.signing[alg]
        except KeyError:
            raise LookupError(f"no {alg} signing key") from None

    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self.published)}

    def public_key_set(self) -> KeySet:
        return KeySet.import_key_set(self.jwks())


async def ensure_keys(
    session: AsyncSession,
    cipher: KeyCipher,
    *,
    rotation: dt.timedelta,
    publish_lead: dt.timedelta,
    keep_after: dt.timedelta,
    now: dt.datetime | None = None,
) -> None:
    """Create a first key per algorithm, and a successor once the current key is within
    ``publish_lead`` of retiring. The caller commits."""
    now = now or utcnow()
    if dialect.is_postgres(session):
        await session.execute(take(AdvisoryLock.SIGNING_KEYS))
    rows = (await session.scalars(select(SigningKey))).all()
    for alg in ALGORITHMS:
        mine = sorted((k for k in rows if k.alg == alg), key=lambda k: k.signs_from)
        last = mine[-1] if mine else None
        if last is None or last.signs_until <= now:
            start = now
        elif last.signs_until - now <= publish_lead:
            start = last.signs_until
        else:
            continue
        kid = new_secret(12)
        key = _generate(alg, kid)
        session.add(
            SigningKey(
                kid=kid,
                alg=alg,
                private_jwk=cipher.seal(key.as_dict(private=True)),
                public_jwk=key.as_dict(private=False),
                created_at=now,
                signs_from=start,
                signs_until=start + rotation,
                published_until=start + rotation + keep_after,
            )
        )
    await session.flush()


#: Private keys already imported, by their sealed form: importing an RSA private key validates it
#: (about 0.4 s of CPU), and the keys are read again every few minutes. Opening the sealed form
#: stays on every read, so a hub with another secret key still cannot use them.
_imported: dict[str, RSAKey | ECKey] = {}


def _import_private(alg: str, sealed: str, cipher: KeyCipher) -> RSAKey | ECKey:
    opened = cipher.open(sealed)
    if sealed not in _imported:
        if len(_imported) >= 64:
            _imported.clear()
        _imported[sealed] = (RSAKey if alg == "RS256" else ECKey).import_key(opened)
    return _imported[sealed]


async def load_keys(session: AsyncSession, cipher: KeyCipher, now: dt.datetime | None = None) -> KeyRing:
    now = now or utcnow()
    rows = (
        await session.scalars(select(SigningKey).where(SigningKey.published_until > now).order_by(SigningKey.signs_from))
    ).all()
    ring = KeyRing()
    for row in rows:
        ring.published.append(row.public_jwk)
        if row.signs_until <= now:
            continue
        key = _import_private(row.alg, row.private_jwk, cipher)
        if row.signs_from <= now:
            ring.signing[row.alg] = key
        else:
            ring._upcoming.append((row.signs_from, row.alg, key))
    return ring
