"""Revoked service tokens known in memory on Postgres (identity.oidc.revocations): a process whose
listening connection is lost asks the database until it listens again, so a revocation it did not
hear of is refused all the same, and after it listens again too."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from identity.appkeys import DB, PROVIDER
from identity.db.models import RevokedServiceToken
from identity.oidc.revocations import APPLICATION_NAME
from tests.support import Hub, RelyingParty, eventually


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_revocation_not_heard_of_is_refused_while_and_after_the_listener_is_lost(hub: Hub, rp: RelyingParty) -> None:
    revocations = hub.app[PROVIDER].revocations

    async def live() -> bool:
        return revocations.live

    await eventually(live, timeout=30, what="the revocation listener live")
    issued = (await rp.post("/token", {"grant_type": "client_credentials"}, auth="client_secret_basic")).json()
    token = issued["access_token"]
    assert (await rp.post("/introspect", {"token": token}, auth="client_secret_basic")).json()["active"] is True

    async with hub.app[DB].begin() as db:
        # The listener's connection ends (a restarted database, a network fault)...
        ended = await db.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": APPLICATION_NAME},
        )
    assert ended == 1

    async def lost() -> bool:
        return not revocations.live

    await eventually(lost, timeout=30, what="the lost listener noticed")
    # ...and another process revokes the token meanwhile: this one did not hear of it.
    token_id = hub.app[PROVIDER].service_tokens.read(token).token_id
    async with hub.app[DB].begin() as db:
        db.add(RevokedServiceToken(token_id=token_id, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)))
    assert (await rp.post("/introspect", {"token": token}, auth="client_secret_basic")).json() == {"active": False}

    await eventually(live, timeout=30, what="the listener live again")
    assert (await rp.post("/introspect", {"token": token}, auth="client_secret_basic")).json() == {"active": False}
