"""Discovery, the public JWKS and signing-key rotation."""

from __future__ import annotations

import datetime as dt

import httpx2
import pytest
from cryptography.exceptions import InvalidTag
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import select

from identity.appkeys import CIPHER, DB
from identity.db.models import SigningKey
from identity.oidc.keys import ensure_keys, load_keys
from identity.sealing import KeyCipher
from tests.support import Browser, Hub, RelyingParty, sign_in_through

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}
ROTATION = dt.timedelta(days=90)
LEAD = dt.timedelta(days=1)
KEEP = dt.timedelta(hours=2)


async def get_json(url: str) -> tuple[httpx2.Response, dict]:  # type: ignore[type-arg]
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.get(url)
    return response, response.json()


async def current_keys(hub: Hub) -> dict[str, SigningKey]:
    async with hub.app[DB]() as db:
        rows = (await db.scalars(select(SigningKey).order_by(SigningKey.signs_from))).all()
    return {row.alg: row for row in rows}


# Discovery -----------------------------------------------------------------------------------


async def test_discovery_document(hub: Hub) -> None:
    response, meta = await get_json(f"{hub.url}/.well-known/openid-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert meta["issuer"] == hub.url
    assert meta["authorization_endpoint"] == f"{hub.url}/authorize"
    assert meta["token_endpoint"] == f"{hub.url}/token"
    assert meta["userinfo_endpoint"] == f"{hub.url}/userinfo"
    assert meta["jwks_uri"] == f"{hub.url}/jwks"
    assert meta["revocation_endpoint"] == f"{hub.url}/revoke"
    assert meta["introspection_endpoint"] == f"{hub.url}/introspect"
    assert meta["end_session_endpoint"] == f"{hub.url}/end-session"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert {"RS256", "ES256"} <= set(meta["id_token_signing_alg_values_supported"])
    assert "none" not in meta["id_token_signing_alg_values_supported"]
    assert meta["response_types_supported"] == ["code"]
    assert meta["subject_types_supported"] == ["public"]
    assert "openid" in meta["scopes_supported"]
    assert meta["backchannel_logout_supported"] is True
    assert meta["backchannel_logout_session_supported"] is True
    # Every endpoint is under the issuer (OIDC Discovery 1.0 section 3).
    for name, value in meta.items():
        if name.endswith(("_endpoint", "_uri")):
            assert value.startswith(hub.url + "/"), name


# JWKS ------------------------------------------------------------------------------------------


async def test_jwks_publishes_rs256_and_es256_public_keys_only(hub: Hub) -> None:
    response, jwks = await get_json(f"{hub.url}/jwks")
    assert response.status_code == 200
    keys = jwks["keys"]
    by_alg = {k["alg"]: k for k in keys}
    assert set(by_alg) == {"RS256", "ES256"}
    assert by_alg["RS256"]["kty"] == "RSA"
    assert by_alg["ES256"]["kty"] == "EC" and by_alg["ES256"]["crv"] == "P-256"
    for key in keys:
        assert key["use"] == "sig"
        assert key["kid"]
        assert not PRIVATE_MEMBERS & set(key), key
    assert len({k["kid"] for k in keys}) == len(keys)
    KeySet.import_key_set(jwks)  # a valid key set


async def test_private_keys_are_stored_encrypted(hub: Hub) -> None:
    rows = await current_keys(hub)
    assert set(rows) == {"RS256", "ES256"}
    for row in rows.values():
        assert isinstance(row.private_jwk, str)
        # No JSON, let alone private members, in clear.
        assert "{" not in row.private_jwk
        for member in PRIVATE_MEMBERS:
            assert f'"{member}"' not in row.private_jwk
        opened = hub.app[CIPHER].open(row.private_jwk)
        assert opened["kid"] == row.kid
        assert "d" in opened
        assert opened["d"] not in row.private_jwk
        assert {k: v for k, v in opened.items() if k not in PRIVATE_MEMBERS} == row.public_jwk
        assert not PRIVATE_MEMBERS & set(row.public_jwk)
        # Another secret key cannot open it.
        with pytest.raises(InvalidTag):
            KeyCipher("another secret key of more than 32 chars").open(row.private_jwk)


async def test_restart_reuses_the_same_keys(hub: Hub) -> None:
    before = await current_keys(hub)
    async with hub.app[DB].begin() as db:
        await ensure_keys(db, hub.app[CIPHER], rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP)
    after = await current_keys(hub)
    assert {a: r.kid for a, r in after.items()} == {a: r.kid for a, r in before.items()}
    async with hub.app[DB]() as db:
        assert len((await db.scalars(select(SigningKey))).all()) == 2


# Rotation ---------------------------------------------------------------------------------------


async def test_successor_is_published_before_it_signs(hub: Hub) -> None:
    cipher = hub.app[CIPHER]
    old = await current_keys(hub)
    rs = old["RS256"]
    assert rs.signs_until - rs.signs_from == dt.timedelta(days=hub.settings.key_rotation_days)

    # Far from the end of the current key: nothing to do.
    async with hub.app[DB].begin() as db:
        await ensure_keys(db, cipher, rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP, now=rs.signs_until - 2 * LEAD)
    async with hub.app[DB]() as db:
        assert len((await db.scalars(select(SigningKey))).all()) == 2

    # Inside the publish lead: a successor per algorithm, starting when the current key stops.
    near = rs.signs_until - dt.timedelta(hours=1)
    async with hub.app[DB].begin() as db:
        await ensure_keys(db, cipher, rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP, now=near)
    async with hub.app[DB].begin() as db:  # idempotent
        await ensure_keys(db, cipher, rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP, now=near)
    async with hub.app[DB]() as db:
        rows = (await db.scalars(select(SigningKey).where(SigningKey.alg == "RS256").order_by(SigningKey.signs_from))).all()
        assert len((await db.scalars(select(SigningKey))).all()) == 4
    assert [r.kid for r in rows][0] == rs.kid
    new = rows[1]
    assert new.signs_from == rs.signs_until
    assert new.signs_until == new.signs_from + ROTATION
    assert new.published_until == new.signs_until + KEEP

    async with hub.app[DB]() as db:
        # Before its signs_from: published, but the old key still signs.
        ring = await load_keys(db, cipher, now=near)
        published = {k["kid"] for k in ring.jwks()["keys"]}
        assert {rs.kid, new.kid} <= published
        assert ring.signing_key("RS256", now=near).kid == rs.kid
        assert all(not PRIVATE_MEMBERS & set(k) for k in ring.jwks()["keys"])
        # The same ring switches over once the successor's time has come.
        assert ring.signing_key("RS256", now=new.signs_from + dt.timedelta(seconds=1)).kid == new.kid

        # A ring loaded after the switch signs with the successor and still publishes the old key.
        later = new.signs_from + dt.timedelta(minutes=1)
        ring = await load_keys(db, cipher, now=later)
        assert ring.signing_key("RS256", now=later).kid == new.kid
        assert rs.kid in {k["kid"] for k in ring.jwks()["keys"]}
        assert ring.signing_key("ES256", now=later).kid != old["ES256"].kid

        # The retired key stays published until published_until, then disappears.
        ring = await load_keys(db, cipher, now=rs.published_until - dt.timedelta(seconds=1))
        assert rs.kid in {k["kid"] for k in ring.jwks()["keys"]}
        ring = await load_keys(db, cipher, now=rs.published_until)
        assert rs.kid not in {k["kid"] for k in ring.jwks()["keys"]}
        assert new.kid in {k["kid"] for k in ring.jwks()["keys"]}


async def test_token_signed_by_successor_verifies_with_published_jwks(hub: Hub) -> None:
    cipher = hub.app[CIPHER]
    rs = (await current_keys(hub))["RS256"]
    near = rs.signs_until - dt.timedelta(hours=1)
    async with hub.app[DB].begin() as db:
        await ensure_keys(db, cipher, rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP, now=near)
    async with hub.app[DB]() as db:
        before_switch = await load_keys(db, cipher, now=near)
        after_switch = await load_keys(db, cipher, now=rs.signs_until + dt.timedelta(seconds=1))
    key = after_switch.signing_key("RS256", now=rs.signs_until + dt.timedelta(seconds=1))
    token = jwt.encode({"alg": "RS256", "kid": key.kid}, {"iss": hub.url}, key)
    # A relying party that fetched the JWKS before the switch can verify the new key's tokens.
    assert jwt.decode(token, before_switch.public_key_set()).claims == {"iss": hub.url}


async def test_expired_key_is_replaced_at_once(hub: Hub) -> None:
    cipher = hub.app[CIPHER]
    rs = (await current_keys(hub))["RS256"]
    gone = rs.signs_until + dt.timedelta(days=10)
    async with hub.app[DB].begin() as db:
        await ensure_keys(db, cipher, rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP, now=gone)
    async with hub.app[DB]() as db:
        ring = await load_keys(db, cipher, now=gone)
    key = ring.signing_key("RS256", now=gone)
    assert key.kid != rs.kid
    assert rs.published_until < gone
    assert rs.kid not in {k["kid"] for k in ring.jwks()["keys"]}


# ID tokens ------------------------------------------------------------------------------------


async def test_default_service_gets_rs256_id_tokens(hub: Hub, browser: Browser) -> None:
    service = await hub.add_service()
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    token, kept = await sign_in_through(rp, browser)
    claims = await rp.validate_id_token(token, kept["nonce"])
    assert claims.header["alg"] == "RS256"
    assert claims.header["kid"] == (await current_keys(hub))["RS256"].kid


async def test_es256_service_gets_es256_id_tokens(hub: Hub, browser: Browser) -> None:
    service = await hub.add_service(id_token_alg="ES256")
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    token, kept = await sign_in_through(rp, browser)
    claims = await rp.validate_id_token(token, kept["nonce"])
    assert claims.header["alg"] == "ES256"
    assert claims.header["kid"] == (await current_keys(hub))["ES256"].kid
    _, jwks = await get_json(f"{hub.url}/jwks")
    es = next(k for k in jwks["keys"] if k["kid"] == claims.header["kid"])
    assert es["alg"] == "ES256"
    # And it does not verify as RS256.
    with pytest.raises(JoseError):
        jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"])


async def test_both_algorithms_switch_over_in_one_ring(hub: Hub) -> None:
    """A ring loaded before the switch hands out each algorithm's successor once its time has
    come, whichever algorithm is asked for first."""
    cipher = hub.app[CIPHER]
    old = await current_keys(hub)
    near = min(r.signs_until for r in old.values()) - dt.timedelta(hours=1)
    async with hub.app[DB].begin() as db:
        await ensure_keys(db, cipher, rotation=ROTATION, publish_lead=LEAD, keep_after=KEEP, now=near)
    async with hub.app[DB]() as db:
        ring = await load_keys(db, cipher, now=near)
    assert ring.signing_key("RS256", now=near).kid == old["RS256"].kid
    assert ring.signing_key("ES256", now=near).kid == old["ES256"].kid
    after = max(r.signs_until for r in old.values()) + dt.timedelta(seconds=1)
    assert ring.signing_key("RS256", now=after).kid != old["RS256"].kid
    assert ring.signing_key("ES256", now=after).kid != old["ES256"].kid
