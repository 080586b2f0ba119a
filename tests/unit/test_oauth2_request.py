"""The hub's authlib request: the same attributes authlib's own constructor sets, and authlib's
transport rule (https, or http on a loopback address) applied to the issuer; its answers' JSON."""

from __future__ import annotations

import json

import pytest
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.errors import InsecureTransportError

from identity.oidc.adapter import HubOAuth2Request, to_response


def test_the_request_has_every_attribute_authlib_gives_its_own() -> None:
    headers = {"Authorization": "Basic eDp5"}
    theirs = OAuth2Request("POST", "https://hub.example/token?x=1", headers=headers)
    ours = HubOAuth2Request("POST", "https://hub.example", "/token?x=1", headers, form=[("grant_type", "client_credentials")])
    missing = set(vars(theirs)) - set(vars(ours))
    assert not missing, f"authlib's OAuth2Request sets {sorted(missing)}, which HubOAuth2Request does not"
    for name, value in vars(theirs).items():
        if name != "payload":  # authlib leaves it None; the hub's holds the parameters
            assert getattr(ours, name) == value, name
    assert ours.payload.grant_type == "client_credentials"
    assert ours.form.getone("grant_type") == "client_credentials"


@pytest.mark.parametrize(
    "issuer", ["https://hub.example", "https://hub.example:8443/auth", "http://127.0.0.1:8000", "http://localhost:9000", "http://[::1]:80"]
)
def test_a_secure_or_loopback_issuer_is_accepted(issuer: str) -> None:
    assert HubOAuth2Request("GET", issuer, "/authorize", {}).uri == issuer + "/authorize"


@pytest.mark.parametrize("issuer", ["http://hub.example", "http://10.0.0.5:8000", "ftp://hub.example"])
def test_an_insecure_issuer_is_refused_on_every_request(issuer: str) -> None:
    for _ in range(2):  # the second time from the cache of checked issuers
        with pytest.raises(InsecureTransportError):
            HubOAuth2Request("GET", issuer, "/authorize", {})


def test_an_answer_echoing_a_lone_surrogate_is_still_json() -> None:
    """orjson refuses a lone surrogate (a client can send one, escaped, in a JSON request
    object); the answer is then encoded as the standard library does, not a server error."""
    response = to_response(400, {"error": "invalid_request", "state": "\ud800"}, [])
    assert response.status == 400 and response.content_type == "application/json"
    assert json.loads(response.body) == {"error": "invalid_request", "state": "\ud800"}
    assert response.headers["Cache-Control"] == "no-store"
