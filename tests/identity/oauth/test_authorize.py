"""The authorization endpoint as a browser and a relying party see it: exact redirect URIs,
error pages versus error redirects, RFC 9207 ``iss``, prompts, consent, links, children and
the browser binding of interactions."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import re
import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import Account, Interaction, Link, Service
from identity.mail import read_outbox
from tests.support import (
    PASSWORD,
    SQLITE_ALONE,
    Browser,
    Hub,
    RelyingParty,
    confirm_mailed_link,
    form,
    location_params,
    sign_in_through,
)

pytestmark = SQLITE_ALONE

CALLBACK = "http://127.0.0.1:9/callback"
SCOPE = "openid profile email offline_access"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(
    rp: RelyingParty, *, omit: tuple[str, ...] = (), nonce: str | None = None, **params: str
) -> tuple[str, dict[str, str]]:
    """A hand-built authorization URL (every parameter controllable) and what the RP keeps."""
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": rp.scope,
        "state": secrets.token_urlsafe(12),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if nonce is not None:
        query["nonce"] = nonce
    query.update(params)
    for name in omit:
        query.pop(name, None)
    kept = {"state": query.get("state", ""), "code_verifier": verifier, "nonce": nonce or ""}
    return f"{rp.hub.url}/authorize?{urlencode(query)}", kept


def is_error_page(response: httpx2.Response, error: str) -> bool:
    return (
        response.status_code == 400
        and "location" not in response.headers
        and "This sign-in request cannot be completed" in response.text
        and f"<code>{error}: " in response.text
    )


async def decode_id_token(hub: Hub, token: dict[str, str]) -> tuple[dict[str, object], dict[str, object]]:
    async with httpx2.AsyncClient(timeout=30) as http:
        jwks = (await http.get(f"{hub.url}/jwks")).json()
    decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256", "ES256"])
    return dict(decoded.header), dict(decoded.claims)


async def consent_and_return(browser: Browser, page: httpx2.Response, decision: str = "allow") -> httpx2.Response:
    assert page.status_code == 200, page.text[:1000]
    assert "to use your account?" in page.text, page.text[:1000]
    f = form(page.text, "/i/")
    assert f.action.endswith("/consent")
    return await browser.go(f.action, method="POST", data=f.fields | {"decision": decision})


# Redirect URI matching -------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:9/callback/x",
        "http://127.0.0.1:9/callback/",
        "http://127.0.0.1:9/Callback",
        "HTTP://127.0.0.1:9/callback",
        "http://127.0.0.1:9/callback?a=1",
        "http://127.0.0.1:9/callback#frag",
        "http://localhost:9/callback",
        "http://127.0.0.1:10/callback",
        "https://127.0.0.1:9/callback",
    ],
)
async def test_redirect_uri_must_match_exactly(rp: RelyingParty, browser: Browser, redirect_uri: str) -> None:
    url, _ = authorize_url(rp, redirect_uri=redirect_uri)
    page = await browser.go(url)
    assert is_error_page(page, "invalid_request"), (page.status_code, page.headers, page.text[:1500])
    assert "The redirect_uri is not registered for this client." in page.text


async def test_missing_redirect_uri_is_an_error_page(rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp, omit=("redirect_uri",))
    page = await browser.go(url)
    assert is_error_page(page, "invalid_request"), page.text[:1500]
    assert "Missing &#39;redirect_uri&#39; in request." in page.text


async def test_unknown_client_is_an_error_page(rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp, client_id="no-such-client")
    page = await browser.go(url)
    assert is_error_page(page, "invalid_client"), page.text[:1500]
    assert "The client does not exist on this server." in page.text


async def test_missing_client_id_is_an_error_page(rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp, omit=("client_id",))
    page = await browser.go(url)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "This sign-in request cannot be completed" in page.text
    assert "invalid_client: Missing &#39;client_id&#39; parameter." in page.text


async def test_redirect_uri_of_another_client_is_refused(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_service(name="Forum", redirect_uris=["http://127.0.0.1:9/forum/cb"])
    url, _ = authorize_url(rp, redirect_uri="http://127.0.0.1:9/forum/cb")
    page = await browser.go(url)
    assert is_error_page(page, "invalid_request")


async def test_unsupported_response_type_redirects_with_error(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, kept = authorize_url(rp, response_type="token")
    response = await browser.go(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == "unsupported_response_type"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url
    assert "code" not in params


async def test_unsupported_response_type_with_bad_redirect_uri_is_a_page(rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp, response_type="token", redirect_uri="http://127.0.0.1:9/elsewhere")
    page = await browser.go(url)
    assert is_error_page(page, "unsupported_response_type")


async def test_missing_pkce_redirects_with_invalid_request(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, kept = authorize_url(rp, omit=("code_challenge", "code_challenge_method"))
    await browser.sign_in()
    response = await browser.go(url)
    assert response.status_code == 302
    params = location_params(response)
    assert params["error"] == "invalid_request"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url


# Scopes -------------------------------------------------------------------------------------


async def test_unknown_scope_redirects_with_invalid_scope(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, kept = authorize_url(rp, scope="openid frobnicate")
    response = await browser.go(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == "invalid_scope"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url


async def test_scope_not_allowed_for_the_service_is_dropped(hub: Hub, browser: Browser) -> None:
    service = await hub.add_service(name="Shop", scope="openid email")
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret, scope="openid profile email phone")
    await rp.discover()
    url, kept = authorize_url(rp, nonce="n-1")
    page = await browser.go(url)
    page = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    assert page.status_code == 200
    # The consent page only lists what the service may have.
    assert "Your email address" in page.text
    assert "Your name, date of birth" not in page.text
    assert "Your phone number" not in page.text
    response = await consent_and_return(browser, page)
    assert response.status_code == 302
    token = await rp.finish(response.headers["location"], kept)
    assert token["scope"] == "openid email"
    async with hub.app[DB]() as db:
        link = await db.scalar(select(Link))
    assert link is not None and link.scope == "openid email"


@pytest.mark.parametrize("scope", [None, "", "phone"])
async def test_empty_effective_scope_is_invalid_scope_not_a_silent_code(
    hub: Hub, browser: Browser, scope: str | None
) -> None:
    """Omitting scope, or asking only for scopes the service may not have, must not yield a code
    without consent (which would link the person and reveal their sub)."""
    service = await hub.add_service(name="Shop", scope="openid email")
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    await browser.sign_in()
    url, kept = authorize_url(rp, omit=("scope",)) if scope is None else authorize_url(rp, scope=scope)
    response = await browser.go(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == "invalid_scope"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url
    assert "code" not in params
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Link))).all() == []


# RFC 9207 iss and state on every authorization response ---------------------------------------


async def test_success_response_carries_iss_state_and_a_code(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await browser.sign_in()
    url, kept = authorize_url(rp, nonce="abc")
    page = await browser.go(url)
    response = await consent_and_return(browser, page)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert set(params) == {"code", "state", "iss"}
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url
    assert len(params["code"]) >= 40


async def test_error_responses_carry_iss_and_state(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    for extra in ({"prompt": "none"}, {"response_type": "token"}, {"scope": "openid nope"}):
        url, kept = authorize_url(rp, **extra)
        response = await browser.go(url)
        assert response.status_code == 302, extra
        params = location_params(response)
        assert params["iss"] == hub.url, extra
        assert params["state"] == kept["state"], extra
        assert "error" in params and "code" not in params


async def test_error_without_state_has_no_state(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp, omit=("state",), prompt="none")
    response = await browser.go(url)
    assert response.status_code == 302
    params = location_params(response)
    assert params["error"] == "login_required"
    assert params["iss"] == hub.url
    assert "state" not in params


# nonce ------------------------------------------------------------------------------------------


async def test_nonce_comes_back_in_the_id_token(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    token, kept = await sign_in_through(rp, browser)
    claims = await rp.validate_id_token(token, kept["nonce"])
    assert claims["nonce"] == kept["nonce"]


async def test_no_nonce_means_no_nonce_claim(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await browser.sign_in()
    url, kept = authorize_url(rp)
    assert "nonce" not in url
    response = await consent_and_return(browser, await browser.go(url))
    token = await rp.finish(response.headers["location"], kept)
    header, claims = await decode_id_token(hub, token)
    assert "nonce" not in claims
    assert claims["iss"] == hub.url
    assert claims["aud"] == rp.client_id


# prompt and max_age --------------------------------------------------------------------------


async def test_prompt_none_without_session_is_login_required(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, kept = authorize_url(rp, prompt="none")
    response = await browser.go(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == "login_required"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url


async def test_prompt_none_before_consent_is_consent_required(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await browser.sign_in()
    url, kept = authorize_url(rp, prompt="none")
    response = await browser.go(url)
    assert response.status_code == 302
    params = location_params(response)
    assert params["error"] == "consent_required"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url


async def test_prompt_none_after_consent_returns_a_code_without_any_page(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    await sign_in_through(rp, browser)
    url, kept = authorize_url(rp, prompt="none", nonce="n2")
    # One request, straight back to the service.
    response = await browser.http.get(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert set(params) == {"code", "state", "iss"}
    token = await rp.finish(response.headers["location"], kept)
    claims = await rp.validate_id_token(token, "n2")
    assert claims["nonce"] == "n2"


async def test_prompt_none_combined_with_login_is_invalid(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await sign_in_through(rp, browser)
    url, kept = authorize_url(rp, prompt="none login")
    response = await browser.go(url)
    assert response.status_code == 302
    params = location_params(response)
    assert params["error"] == "invalid_request"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url


async def test_prompt_login_asks_again_and_renews_auth_time(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    first, first_kept = await sign_in_through(rp, browser)
    old = (await rp.validate_id_token(first, first_kept["nonce"]))["auth_time"]
    old_cookie = browser.http.cookies.get("osi_session")

    url, kept = authorize_url(rp, prompt="login", nonce="n-login")
    page = await browser.go(url)
    assert page.status_code == 200
    assert 'name="password"' in page.text
    login = form(page.text, "/i/")
    assert login.action.endswith("/login")
    assert "to continue to <strong>Store</strong>" in page.text

    response = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    # Consent is remembered: straight back with a code.
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    token = await rp.finish(response.headers["location"], kept)
    claims = await rp.validate_id_token(token, "n-login")
    assert claims["auth_time"] >= old
    assert browser.http.cookies.get("osi_session") != old_cookie


async def test_prompt_login_resume_without_signing_in_shows_the_form_again(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    await sign_in_through(rp, browser)
    url, _ = authorize_url(rp, prompt="login")
    first = await browser.http.get(url)
    assert first.status_code == 302
    uid_path = first.headers["location"]
    assert uid_path.startswith("/i/")
    # Skipping the sign-in step by going to resume does not get a code.
    response = await browser.go(uid_path + "/resume")
    assert response.status_code == 200
    assert 'name="password"' in response.text


async def test_max_age_zero_forces_sign_in(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    first, first_kept = await sign_in_through(rp, browser)
    old = (await rp.validate_id_token(first, first_kept["nonce"]))["auth_time"]
    url, kept = authorize_url(rp, max_age="0", nonce="n-max")
    page = await browser.go(url)
    assert page.status_code == 200
    assert 'name="password"' in page.text
    response = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    assert response.status_code == 302
    token = await rp.finish(response.headers["location"], kept)
    claims = await rp.validate_id_token(token, "n-max")
    assert claims["auth_time"] >= old


async def test_max_age_large_does_not_ask_again(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await sign_in_through(rp, browser)
    url, _ = authorize_url(rp, max_age="3600")
    response = await browser.http.get(url)
    assert response.status_code == 302
    assert "code" in location_params(response)


# Consent ------------------------------------------------------------------------------------------


async def test_consent_is_remembered(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await sign_in_through(rp, browser)
    url, kept = authorize_url(rp)
    response = await browser.http.get(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["state"] == kept["state"]
    assert "code" in params


async def test_consent_for_fewer_scopes_is_remembered_but_more_scopes_ask(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    await sign_in_through(rp, browser)
    fewer, _ = authorize_url(rp, scope="openid email")
    assert "code" in location_params(await browser.http.get(fewer))
    more, _ = authorize_url(rp, scope="openid email phone")
    page = await browser.go(more)
    assert page.status_code == 200
    assert "Allow Store to use your account?" in page.text
    assert "Your phone number" in page.text


async def test_prompt_consent_shows_the_consent_page_again(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await sign_in_through(rp, browser)
    url, kept = authorize_url(rp, prompt="consent")
    page = await browser.go(url)
    assert page.status_code == 200
    assert "Allow Store to use your account?" in page.text
    assert 'name="password"' not in page.text
    response = await consent_and_return(browser, page)
    assert response.status_code == 302
    params = location_params(response)
    assert params["state"] == kept["state"]
    assert "code" in params


async def test_denying_consent_redirects_with_access_denied(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await browser.sign_in()
    url, kept = authorize_url(rp)
    response = await consent_and_return(browser, await browser.go(url), decision="deny")
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["error"] == "access_denied"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url
    assert "code" not in params
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Link))).all() == []


async def test_first_authorization_links_the_service(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Link))).all() == []
    await sign_in_through(rp, browser)
    async with hub.app[DB]() as db:
        links = (await db.scalars(select(Link))).all()
        account = await db.scalar(select(Account).where(Account.email == "ann@example.com"))
        service = await db.scalar(select(Service).where(Service.client_id == rp.client_id))
    assert len(links) == 1
    link = links[0]
    assert account is not None and service is not None
    assert (link.account_id, link.service_id) == (account.id, service.id)
    assert link.status == "active"
    assert link.scope == SCOPE
    assert link.created_at is not None

    # A later authorization for more scopes widens the link; there is still one row.
    url, _ = authorize_url(rp, scope="openid phone")
    response = await consent_and_return(browser, await browser.go(url))
    assert "code" in location_params(response)
    async with hub.app[DB]() as db:
        links = (await db.scalars(select(Link))).all()
    assert len(links) == 1
    assert links[0].scope == "openid profile email phone offline_access"


# Children ----------------------------------------------------------------------------------------


async def test_child_needs_guardian_consent_before_authorizing(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    today = dt.date.today()
    birthdate = today.replace(year=today.year - 12) if (today.month, today.day) != (2, 29) else dt.date(today.year - 12, 3, 1)
    page = await browser.go("/register")
    page = await browser.submit(
        page,
        "/register",
        email="kid@example.com",
        password=PASSWORD,
        given_name="Kit",
        family_name="Example",
        birthdate=birthdate.isoformat(),
        guardian_email="parent@example.com",
    )
    assert page.status_code == 200, page.text[:2000]
    assert "Check your email" in page.text

    await browser.sign_in("kid@example.com")
    url, kept = authorize_url(rp)
    response = await browser.go(url)
    assert response.status_code == 302, response.text[:2000]
    params = location_params(response)
    assert params["error"] == "access_denied"
    assert params["state"] == kept["state"]
    assert params["iss"] == hub.url
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Link))).all() == []

    mails = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "parent@example.com"]
    assert len(mails) == 1
    assert mails[0]["Subject"] == "Your consent is needed for a child's account"
    body = mails[0].get_content()
    link = next(w for w in body.split() if "/guardian/confirm?token=" in w)
    path = link[len(hub.url) :]

    guardian = Browser(hub)
    try:
        confirm = await guardian.go(path)
        assert confirm.status_code == 200
        assert "Consent to a child&#39;s account" in confirm.text
        done = await guardian.submit(confirm, "/guardian/confirm")
        assert done.status_code == 200
        assert "Consent recorded" in done.text
    finally:
        await guardian.aclose()

    confirmed = await confirm_mailed_link(hub, browser, "kid@example.com", "/verify-email")
    assert "Address confirmed" in confirmed.text
    url, kept = authorize_url(rp)
    page = await browser.go(url)
    response = await consent_and_return(browser, page)
    assert response.status_code == 302
    params = location_params(response)
    assert "code" in params and params["state"] == kept["state"]
    token = await rp.finish(response.headers["location"], kept)
    assert "id_token" in token


async def test_child_created_by_an_operator_waits_for_the_mailed_guardian_consent(
    hub: Hub, rp: RelyingParty, browser: Browser
) -> None:
    today = dt.date.today()
    birthdate = dt.date(today.year - 12, 1, 1)
    await hub.add_user("kid@example.com", birthdate=birthdate.isoformat(), guardian_email="parent@example.com", verified=True)
    await browser.sign_in("kid@example.com")
    url, _ = authorize_url(rp)
    response = await browser.go(url)
    assert response.status_code == 302
    assert location_params(response)["error"] == "access_denied"

    (mail,) = [m for m in read_outbox(hub.settings.data_dir / "mail") if m["To"] == "parent@example.com"]
    assert "Ann" not in mail.get_content() and "kid@" not in mail.get_content()  # nothing the account holder typed
    assert f"date of birth as 1 January {birthdate.year}" in mail.get_content()
    link = next(w for w in mail.get_content().split() if "/guardian/confirm?token=" in w)
    guardian = Browser(hub)
    try:
        done = await guardian.submit(await guardian.go(link[len(hub.url) :]), "/guardian/confirm")
        assert "Consent recorded" in done.text
    finally:
        await guardian.aclose()
    url, kept = authorize_url(rp)
    response = await consent_and_return(browser, await browser.go(url))
    assert "code" in location_params(response)


# Interactions are bound to the browser ---------------------------------------------------------


async def test_interaction_does_not_work_from_another_browser(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp)
    first = await browser.http.get(url)
    assert first.status_code == 302
    interaction = first.headers["location"]
    assert interaction.startswith("/i/")
    own = await browser.go(interaction)
    assert own.status_code == 200 and 'name="password"' in own.text

    other = Browser(hub)
    try:
        page = await other.go(interaction)
        assert page.status_code == 400
        assert "This sign-in has expired" in page.text
        assert 'name="password"' not in page.text

        resumed = await other.go(interaction + "/resume")
        assert resumed.status_code == 400
        assert "This sign-in has expired" in resumed.text

        # Even with a valid form of its own (CSRF passes), the other browser cannot sign in there.
        own_form = await other.go("/sign-in")
        token = form(own_form.text, "/sign-in").fields["csrf_token"]
        posted = await other.go(
            interaction + "/login",
            method="POST",
            data={"csrf_token": token, "email": "ann@example.com", "password": PASSWORD},
        )
        assert posted.status_code == 400
        assert "This sign-in has expired" in posted.text
        assert "osi_session" not in other.http.cookies
    finally:
        await other.aclose()

    # The original browser can still finish.
    done = await browser.submit(own, "/i/", email="ann@example.com", password=PASSWORD)
    assert done.status_code == 200 and "Allow Store" in done.text


async def test_interaction_is_single_use(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp)
    first = await browser.http.get(url)
    interaction = first.headers["location"]
    page = await browser.go(interaction)
    page = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    response = await consent_and_return(browser, page)
    assert response.status_code == 302 and "code" in location_params(response)
    again = await browser.go(interaction + "/resume")
    assert again.status_code == 400
    assert "This sign-in has expired" in again.text


async def test_unknown_interaction_has_expired(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/i/" + secrets.token_urlsafe(16))
    assert page.status_code == 400
    assert "This sign-in has expired" in page.text
    assert urlsplit(str(page.url)).path.startswith("/i/")


# Other request shapes ----------------------------------------------------------------------------


async def test_repeated_parameter_is_an_error_page(rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp)
    page = await browser.go(url + "&" + urlencode({"redirect_uri": "http://127.0.0.1:9/evil"}))
    assert is_error_page(page, "invalid_request")
    assert "Multiple &#39;redirect_uri&#39; in request." in page.text


async def test_authorization_request_by_post(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    """OIDC Core 3.1.2.1: the authorization endpoint supports POST too, through sign-in and consent."""
    url, kept = authorize_url(rp, nonce="n-post")
    data = dict(parse_qsl(urlsplit(url).query))
    first = await browser.http.post("/authorize", data=data)
    assert first.status_code == 302
    assert first.headers["location"].startswith("/i/")
    page = await browser.go(first.headers["location"])
    assert 'name="password"' in page.text
    page = await browser.submit(page, "/i/", email="ann@example.com", password=PASSWORD)
    response = await consent_and_return(browser, page)
    assert response.status_code == 302
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = location_params(response)
    assert params["state"] == kept["state"] and params["iss"] == hub.url
    token = await rp.finish(response.headers["location"], kept)
    claims = await rp.validate_id_token(token, "n-post")
    assert claims["nonce"] == "n-post"


async def test_state_is_echoed_exactly(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    state = "a b&c=d/é?+"
    url, kept = authorize_url(rp, state=state, prompt="none")
    response = await browser.go(url)
    assert location_params(response)["state"] == state
    await sign_in_through(rp, browser)
    url, kept = authorize_url(rp, state=state)
    response = await browser.go(url)
    params = location_params(response)
    assert params["state"] == state and "code" in params


async def test_registered_redirect_uri_with_a_query_keeps_it(hub: Hub, browser: Browser) -> None:
    registered = "http://127.0.0.1:9/cb?tenant=blue"
    service = await hub.add_service(redirect_uris=[registered])
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret, redirect_uri=registered)
    await rp.discover()
    url, kept = authorize_url(rp, prompt="none")
    response = await browser.go(url)
    assert response.headers["location"].startswith("http://127.0.0.1:9/cb?tenant=blue&")
    params = location_params(response)
    assert params["tenant"] == "blue" and params["error"] == "login_required" and params["iss"] == hub.url
    # Without the registered query it does not match.
    url, _ = authorize_url(rp, redirect_uri="http://127.0.0.1:9/cb")
    assert is_error_page(await browser.go(url), "invalid_request")


async def test_service_name_is_escaped_on_the_consent_page(hub: Hub, browser: Browser) -> None:
    service = await hub.add_service(name='Evil <script>alert("x")</script>')
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret)
    await rp.discover()
    await browser.sign_in()
    url, _ = authorize_url(rp)
    page = await browser.go(url)
    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "Allow Evil &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; to use your account?" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


async def test_expired_interaction_cannot_be_used(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp)
    first = await browser.http.get(url)
    interaction = first.headers["location"]
    page = await browser.go(interaction)
    assert page.status_code == 200
    async with hub.app[DB].begin() as db:
        row = await db.scalar(select(Interaction))
        assert row is not None
        row.expires_at = row.created_at - dt.timedelta(seconds=1)
    page = await browser.go(interaction)
    assert page.status_code == 400
    assert "This sign-in has expired" in page.text
    token = form((await browser.go("/sign-in")).text, "/sign-in").fields["csrf_token"]
    posted = await browser.go(
        interaction + "/login", method="POST", data={"csrf_token": token, "email": "ann@example.com", "password": PASSWORD}
    )
    assert posted.status_code == 400
    assert "This sign-in has expired" in posted.text


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "https://store.example/r/1"}, "request_uri_not_supported"),
        ({"response_mode": "fragment"}, "invalid_request"),
        ({"response_mode": "form_post"}, "invalid_request"),
    ],
)
async def test_unsupported_request_features_are_refused(
    rp: RelyingParty, browser: Browser, extra: dict[str, str], error: str
) -> None:
    await browser.sign_in()
    url, kept = await rp.start(**extra)
    response = await browser.go(url)
    assert response.status_code == 302
    params = location_params(response)
    assert params["error"] == error
    assert params["state"] == kept["state"]


def request_object(claims: dict[str, str]) -> str:
    """An unsigned request object (OIDC Core 6.1), as a service that puts its parameters there
    would send it."""
    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}."


@pytest.mark.parametrize("signed_in", [False, True])
@pytest.mark.parametrize(
    ("parameter", "error"), [("request", "request_not_supported"), ("request_uri", "request_uri_not_supported")]
)
async def test_a_request_object_is_refused_as_such_even_when_pkce_and_scope_are_only_inside_it(
    hub: Hub, rp: RelyingParty, browser: Browser, parameter: str, error: str, signed_in: bool
) -> None:
    """OIDC Core 6.1: the hub supports no request objects, so it says that, to the service's
    redirect URI, rather than reporting the parameters it could not see as missing."""
    if signed_in:
        await browser.sign_in()
    _, challenge = pkce()
    inside = {
        "iss": rp.client_id, "aud": hub.url, "client_id": rp.client_id, "response_type": "code", "redirect_uri": rp.redirect_uri,
        "scope": "openid profile", "code_challenge": challenge, "code_challenge_method": "S256", "nonce": "n-0S6",
    }
    value = request_object(inside) if parameter == "request" else "https://store.example/request-objects/1"
    url, kept = authorize_url(rp, omit=("code_challenge", "code_challenge_method", "scope"), **{parameter: value})
    response = await browser.go(url)
    assert response.status_code == 302
    assert response.headers["location"].startswith(rp.redirect_uri + "?")
    params = location_params(response)
    assert params["error"] == error
    assert params["state"] == kept["state"] and params["iss"] == hub.url
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Interaction))).all() == [] and (await db.scalars(select(Link))).all() == []


async def test_a_request_object_with_an_unregistered_redirect_uri_gets_the_error_page(rp: RelyingParty, browser: Browser) -> None:
    url, _ = authorize_url(rp, redirect_uri="https://evil.example/cb", request=request_object({"client_id": rp.client_id}))
    response = await browser.go(url)
    assert is_error_page(response, "invalid_request")


async def test_an_unconfirmed_address_is_not_linked_until_confirmed(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user("new@example.com")
    await browser.sign_in("new@example.com")
    url, kept = authorize_url(rp)
    page = await browser.go(url)
    assert page.status_code == 403
    assert "Confirm your email address first" in page.text
    async with hub.app[DB]() as db:
        assert (await db.scalars(select(Link))).all() == []

    silent, _ = authorize_url(rp, prompt="none")
    response = await browser.go(silent)
    assert location_params(response)["error"] == "interaction_required"

    resent = await browser.submit(page, "/verify-email/resend")
    assert "We sent a new confirmation link to new@example.com." in resent.text
    await confirm_mailed_link(hub, browser, "new@example.com", "/verify-email")
    retry = re.search(r'href="([^"]+)">I have confirmed it', page.text)
    assert retry is not None
    response = await consent_and_return(browser, await browser.go(html.unescape(retry.group(1))))
    params = location_params(response)
    assert "code" in params and params["state"] == kept["state"]


async def test_consenting_in_two_browsers_at_once(hub: Hub, rp: RelyingParty) -> None:
    """Two tabs or devices approving the same service at the same moment both get their code
    (the consent and link rows are created once, without a unique-constraint failure)."""
    import asyncio

    browsers = [Browser(hub), Browser(hub)]
    try:
        pages = []
        for b in browsers:
            await b.sign_in()
            url, _ = authorize_url(rp)
            pages.append(await b.go(url))
        responses = await asyncio.gather(*(consent_and_return(b, page) for b, page in zip(browsers, pages)))
    finally:
        for b in browsers:
            await b.aclose()
    assert [r.status_code for r in responses] == [302, 302]
    assert all("code" in location_params(r) for r in responses)
    async with hub.app[DB]() as db:
        assert len((await db.scalars(select(Link))).all()) == 1
