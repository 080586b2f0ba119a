"""private_key_jwt client authentication (RFC 7523, OIDC Core 9) at the token, introspection and
revocation endpoints, with keys registered inline or published at a jwks_uri; authlib's own
client (``PrivateKeyJWT``) as the relying party, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import func, select

from identity import admin
from identity.appkeys import DB
from identity.db.models import ClientAssertion
from identity.web.app import create_app
from tests.conftest import bound_socket
from tests.support import Browser, Hub, LocalServer, RelyingParty, authorize_through, query_params

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def ec_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"})


def public_jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@dataclass
class Service:
    hub: Hub
    client_id: str
    key: Any
    rp: RelyingParty

    def assertion(self, *, key: Any = None, alg: str = "ES256", **claims: Any) -> str:
        """A client assertion, every claim controllable (None leaves one out)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.hub.url,
            "iat": now,
            "exp": now + 60,
            "jti": f"jti-{time.monotonic_ns()}",
        }
        payload |= claims
        key = key or self.key
        header = {"alg": alg, "kid": key.kid}
        return jwt.encode(header, {k: v for k, v in payload.items() if v is not None}, key, algorithms=[alg])

    async def post(self, path: str, data: dict[str, str], assertion: str | None = None) -> httpx2.Response:
        body = data | {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion or self.assertion()}
        async with httpx2.AsyncClient(base_url=self.hub.url, timeout=30) as http:
            return await http.post(path, data=body)

    def client(self, *, aud: str | None = None, **kwargs: Any) -> AsyncOAuth2Client:
        """authlib's client, signing a new assertion per request (aud: the token endpoint, its
        default, unless ``aud`` names another, such as the issuer)."""
        client = AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self.key,
            token_endpoint_auth_method="private_key_jwt",
            revocation_endpoint_auth_method="private_key_jwt",
            redirect_uri=self.rp.redirect_uri,
            code_challenge_method="S256",
            scope=self.rp.scope,
            **kwargs,
        )
        client.register_client_auth_method(PrivateKeyJWT(aud, alg="ES256"))
        return client


async def register(hub: Hub, key: Any, **kwargs: Any) -> Service:
    kwargs.setdefault("jwks", public_jwks(key))
    created = await hub.add_service(token_endpoint_auth_method="private_key_jwt", **kwargs)
    assert created.client_secret is None
    rp = RelyingParty(hub, created.client_id, None)
    await rp.discover()
    return Service(hub, created.client_id, key, rp)


@pytest.fixture
async def service(hub: Hub) -> Service:
    await hub.add_user(verified=True)
    return await register(hub, ec_key("k1"))


def refused(response: httpx2.Response) -> bool:
    """RFC 7523 section 3.2: a failed client authentication is 401 invalid_client."""
    return response.status_code == 401 and response.json()["error"] == "invalid_client" and "access_token" not in response.json()


async def used_assertions(hub: Hub) -> int:
    async with hub.app[DB]() as db:
        return await db.scalar(select(func.count()).select_from(ClientAssertion)) or 0


async def test_authlib_client_completes_the_code_flow_refresh_introspection_and_revocation(
    hub: Hub, service: Service, browser: Browser
) -> None:
    location, kept = await authorize_through(service.rp, browser)
    async with service.client(state=kept["state"]) as client:
        # authlib's default audience: the token endpoint URL (OIDC Core 9).
        token = dict(
            await client.fetch_token(
                service.rp.metadata["token_endpoint"], authorization_response=location, code_verifier=kept["code_verifier"]
            )
        )
    assert token["token_type"] == "Bearer" and "refresh_token" in token and "id_token" in token
    assert (await hub.userinfo(token["access_token"])).status_code == 200

    async with service.client(aud=hub.url, token=token) as client:  # audience: the issuer identifier
        newer = dict(await client.refresh_token(service.rp.metadata["token_endpoint"]))
        introspected = (await client.introspect_token(service.rp.metadata["introspection_endpoint"], token=newer["access_token"])).json()
        assert introspected["active"] is True and introspected["client_id"] == service.client_id
        revoked = await client.revoke_token(service.rp.metadata["revocation_endpoint"], token=newer["refresh_token"])
        assert revoked.status_code == 200
    assert (await hub.userinfo(newer["access_token"])).status_code == 401
    assert await used_assertions(hub) == 4  # one per request


async def test_client_credentials_with_an_rsa_key(hub: Hub) -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    service = await register(hub, key)
    async with AsyncOAuth2Client(client_id=service.client_id, client_secret=key, token_endpoint_auth_method="private_key_jwt") as client:
        client.register_client_auth_method(PrivateKeyJWT())  # RS256, aud = the token endpoint
        token = await client.fetch_token(f"{hub.url}/token", grant_type="client_credentials", scope="profile")
    assert token["access_token"].startswith("ost.")


async def test_a_replayed_assertion_is_refused(service: Service) -> None:
    assertion = service.assertion()
    assert (await service.post("/token", {"grant_type": "client_credentials"}, assertion)).status_code == 200
    assert refused(await service.post("/token", {"grant_type": "client_credentials"}, assertion))
    assert refused(await service.post("/introspect", {"token": "x"}, assertion))


async def test_an_assertion_is_single_use_across_hub_processes(hub: Hub, service: Service) -> None:
    """Another hub process on the same database (its own caches) refuses an assertion the first used."""
    sock = bound_socket()
    other = TestServer(create_app(hub.settings, migrate=False), host="127.0.0.1", port=sock.getsockname()[1], socket_factory=lambda *_: sock)
    await other.start_server()
    try:
        assertion = service.assertion()
        assert (await service.post("/token", {"grant_type": "client_credentials"}, assertion)).status_code == 200
        async with httpx2.AsyncClient(timeout=30) as http:
            again = await http.post(
                f"http://127.0.0.1:{other.port}/token",
                data={"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion},
            )
        assert refused(again)
    finally:
        await other.close()


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(time.time()) - 3600},  # expired
        {"exp": None},  # no exp
        {"exp": int(time.time()) + 3 * 3600},  # too far ahead
        {"iat": int(time.time()) + 3600},  # issued in the future
        {"aud": "https://other.example"},  # another audience
        {"aud": "AUDIENCE_LIST"},  # several audiences
        {"aud": "INTROSPECTION"},  # an endpoint that is not the issuer nor the token endpoint
        {"jti": None},  # no jti
        {"iss": "someone-else"},
        {"sub": "no-such-client", "iss": "no-such-client"},
    ],
)
async def test_bad_assertions_are_refused_and_not_remembered(hub: Hub, service: Service, claims: dict[str, Any]) -> None:
    if claims.get("aud") == "AUDIENCE_LIST":
        claims["aud"] = [hub.url, "https://other.example"]
    elif claims.get("aud") == "INTROSPECTION":
        claims["aud"] = f"{hub.url}/introspect"
    response = await service.post("/token", {"grant_type": "client_credentials"}, service.assertion(**claims))
    assert refused(response), response.text
    assert response.json()["error_description"] == "Client authentication failed."
    assert await used_assertions(hub) == 0


async def test_a_signature_by_another_key_is_refused(service: Service) -> None:
    forged = service.assertion(key=ec_key("k1"))  # same kid, another key
    assert refused(await service.post("/token", {"grant_type": "client_credentials"}, forged))
    unknown = service.assertion(key=ec_key("k9"))
    assert refused(await service.post("/token", {"grant_type": "client_credentials"}, unknown))


async def test_a_symmetric_algorithm_is_refused(service: Service) -> None:
    now = int(time.time())
    claims = {"iss": service.client_id, "sub": service.client_id, "aud": service.hub.url, "exp": now + 60, "jti": "h"}
    forged = jwt.encode({"alg": "HS256", "kid": "k1"}, claims, OctKey.import_key("x" * 32), algorithms=["HS256"])
    assert refused(await service.post("/token", {"grant_type": "client_credentials"}, forged))


async def test_a_client_id_beside_the_assertion_must_be_its_subject(hub: Hub, service: Service) -> None:
    other = await hub.add_service(name="Other")
    response = await service.post("/token", {"grant_type": "client_credentials", "client_id": other.client_id})
    assert refused(response)
    ok = await service.post("/token", {"grant_type": "client_credentials", "client_id": service.client_id})
    assert ok.status_code == 200


async def test_a_secret_does_not_authenticate_a_private_key_jwt_service(service: Service) -> None:
    async with httpx2.AsyncClient(base_url=service.hub.url) as http:
        response = await http.post("/token", data={"grant_type": "client_credentials"}, auth=(service.client_id, "guess"))
        public = await http.post("/token", data={"grant_type": "client_credentials", "client_id": service.client_id})
    assert refused(response) and refused(public)


async def test_failed_authentication_revokes_nothing(hub: Hub, service: Service, browser: Browser) -> None:
    location, kept = await authorize_through(service.rp, browser)
    code = {
        "grant_type": "authorization_code",
        "code": query_params(location)["code"],
        "redirect_uri": service.rp.redirect_uri,
        "code_verifier": kept["code_verifier"],
    }
    expired = service.assertion(exp=int(time.time()) - 600)
    assert refused(await service.post("/token", code, expired))
    token = (await service.post("/token", code)).json()  # the code was not spent
    assert "refresh_token" in token

    refresh = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    assert refused(await service.post("/token", refresh, service.assertion(aud="https://other.example")))
    assert refused(await service.post("/revoke", {"token": token["access_token"]}, service.assertion(aud="https://other.example")))
    assert (await hub.userinfo(token["access_token"])).status_code == 200  # nothing was revoked
    assert (await service.post("/token", refresh)).status_code == 200


class JwksEndpoint:
    """A service's jwks_uri: a real HTTP server whose JWK Set the test rotates, counting fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        app = web.Application()
        app.router.add_get("/jwks", self.serve)
        self.server = LocalServer(app)

    async def serve(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response(self.jwks)


@pytest.fixture
async def published(hub: Hub) -> AsyncIterator[tuple[Service, JwksEndpoint]]:
    key = ec_key("k1")
    endpoint = JwksEndpoint(public_jwks(key))
    async with endpoint.server:
        yield await register(hub, key, jwks=None, jwks_uri=f"{endpoint.server.url}/jwks"), endpoint


@pytest.mark.parametrize("settings_overrides", [{"jwks_uri_refetch_interval": 0}])
async def test_jwks_uri_is_cached_and_fetched_again_for_a_rotated_key(published: tuple[Service, JwksEndpoint]) -> None:
    service, endpoint = published
    grant = {"grant_type": "client_credentials"}
    assert (await service.post("/token", grant)).status_code == 200
    assert (await service.post("/token", grant)).status_code == 200
    assert endpoint.fetches == 1  # cached

    rotated = ec_key("k2")
    endpoint.jwks = public_jwks(rotated)
    assert (await service.post("/token", grant, service.assertion(key=rotated))).status_code == 200
    assert endpoint.fetches == 2  # the unknown kid made the hub fetch the keys again
    assert refused(await service.post("/token", grant))  # the old key is gone
    assert refused(await service.post("/token", grant, service.assertion(key=ec_key("k3"))))


async def test_unknown_kids_refetch_at_most_once_per_interval(published: tuple[Service, JwksEndpoint]) -> None:
    service, endpoint = published
    grant = {"grant_type": "client_credentials"}
    assert (await service.post("/token", grant)).status_code == 200
    for n in range(3):
        assert refused(await service.post("/token", grant, service.assertion(key=ec_key(f"made-up-{n}"))))
    assert endpoint.fetches == 1


async def test_a_jwks_uri_that_fails_refuses_the_service(hub: Hub) -> None:
    key = ec_key("k1")
    endpoint = JwksEndpoint({"not": "a jwks"})
    async with endpoint.server:
        service = await register(hub, key, jwks=None, jwks_uri=f"{endpoint.server.url}/jwks")
        assert refused(await service.post("/token", {"grant_type": "client_credentials"}))
    assert endpoint.fetches == 1


@pytest.mark.parametrize("settings_overrides", [{"outbound_allowed_networks": []}])
async def test_jwks_uri_goes_through_the_outbound_policy(published: tuple[Service, JwksEndpoint]) -> None:
    service, endpoint = published
    assert refused(await service.post("/token", {"grant_type": "client_credentials"}))
    assert endpoint.fetches == 0  # loopback is not a public address


async def test_discovery_lists_private_key_jwt(hub: Hub) -> None:
    async with httpx2.AsyncClient() as http:
        metadata = (await http.get(f"{hub.url}/.well-known/openid-configuration")).json()
    for endpoint in ("token", "revocation", "introspection"):
        assert "private_key_jwt" in metadata[f"{endpoint}_endpoint_auth_methods_supported"]
        algs = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert "RS256" in algs and "ES256" in algs and "HS256" not in algs and "none" not in algs


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # no keys
        {"jwks": {"keys": []}},
        {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
        {"jwks": "PRIVATE"},
        {"jwks": "BOTH"},
        {"jwks_uri": "http://keys.example/jwks"},
    ],
)
async def test_registration_needs_public_keys(hub: Hub, kwargs: dict[str, Any]) -> None:
    key = ec_key("k1")
    if kwargs.get("jwks") == "PRIVATE":
        kwargs["jwks"] = {"keys": [key.as_dict(private=True)]}
    elif kwargs.get("jwks") == "BOTH":
        kwargs = {"jwks": public_jwks(key), "jwks_uri": "https://keys.example/jwks"}
    with pytest.raises(admin.InvalidInput):
        await hub.add_service(token_endpoint_auth_method="private_key_jwt", **kwargs)
    # (Keys without private_key_jwt are taken, for signed request objects: test_request_objects.py.)


async def test_private_key_jwt_sign_helper_is_accepted(service: Service) -> None:
    """What an integrator without authlib's OAuth client would call: authlib's signing helper."""
    assertion = private_key_jwt_sign(service.key, client_id=service.client_id, token_endpoint=service.hub.url, alg="ES256")
    assert (await service.post("/token", {"grant_type": "client_credentials"}, assertion)).status_code == 200
