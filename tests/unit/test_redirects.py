"""Redirect URI rules (identity.oidc.redirects): exact matching, RFC 8252 loopback ports, and
what a native or web service may register."""

from __future__ import annotations

import pytest

from identity.oidc.redirects import BadRedirectURI, check, matches


@pytest.mark.parametrize(
    ("registered", "requested", "native", "expected"),
    [
        ("http://127.0.0.1/cb", "http://127.0.0.1:51004/cb", True, True),
        ("http://127.0.0.1/cb", "http://127.0.0.1/cb", True, True),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:9090/cb", True, True),
        ("http://[::1]/cb", "http://[::1]:8/cb", True, True),
        ("http://127.0.0.1/cb?a=1", "http://127.0.0.1:8/cb?a=1", True, True),
        ("http://127.0.0.1/cb", "http://127.0.0.1:51004/cb", False, False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:51004/other", True, False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:51004/cb?a=1", True, False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:0/cb", True, False),
        ("http://127.0.0.1/cb", "http://127.0.0.1:65536/cb", True, False),
        ("http://127.0.0.1/cb", "http://[::1]:8/cb", True, False),
        ("http://127.0.0.1/cb", "http://localhost:8/cb", True, False),
        ("http://localhost/cb", "http://localhost:8/cb", True, False),
        ("https://app.example/cb", "https://app.example:444/cb", True, False),
        ("com.example.app:/cb", "com.example.app:/cb", True, True),
        ("com.example.app:/cb", "com.example.app:/cb2", True, False),
    ],
)
def test_matches(registered: str, requested: str, native: bool, expected: bool) -> None:
    assert matches(registered, requested, native=native) is expected


@pytest.mark.parametrize(
    ("uri", "native"),
    [
        ("https://app.example/cb", False),
        ("http://127.0.0.1:9/cb", False),
        ("http://localhost/cb", False),
        ("https://app.example/cb", True),
        ("http://127.0.0.1/cb", True),
        ("http://[::1]/cb", True),
        ("com.example.app:/oauth2redirect", True),
    ],
)
def test_may_register(uri: str, native: bool) -> None:
    assert check(uri, native=native) == uri


@pytest.mark.parametrize(
    ("uri", "native"),
    [
        ("http://app.example/cb", False),
        ("com.example.app:/cb", False),
        ("http://localhost/cb", True),
        ("http://10.0.0.1/cb", True),
        ("myapp:/cb", True),
        ("javascript:alert(1)", True),
        ("https://app.example/cb#f", True),
        ("com.example.app:/c b", True),
    ],
)
def test_may_not_register(uri: str, native: bool) -> None:
    with pytest.raises(BadRedirectURI):
        check(uri, native=native)
