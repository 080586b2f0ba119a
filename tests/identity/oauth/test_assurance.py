"""Assurance for services (RFC 8176 ``amr``, the hub's ``acr`` levels): discovery lists exactly
the two acr values; ID tokens say how the person signed in; a service asking for
``acr_values=urn:onesignin:acr:mfa`` of a password-only session gets step-up at the hub (the
code, or how to set two-step sign-in up), and then an ID token whose ``acr`` is exactly that.
ID tokens are checked by authlib's relying-party validation (joserfc for the signature), not by
hand; userinfo carries no factors."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select

from identity.appkeys import DB
from identity.db.models import BrowserSession
from tests.identity.pages.test_two_step import code_step, enrol, later, password_step
from tests.support import Browser, Hub, RelyingParty, location_params

PASSWORD_ACR = "urn:onesignin:acr:password"
MFA = "urn:onesignin:acr:mfa"


async def validated(rp: RelyingParty, token: dict[str, Any], nonce: str, acr: str | None = None) -> CodeIDToken:
    """The ID token as a relying party checks it: signature against the JWKS, iss, aud, nonce,
    at_hash, and, when ``acr`` is given, that exact acr (an essential claim)."""
    async with httpx2.AsyncClient() as http:
        jwks = (await http.get(rp.metadata["jwks_uri"])).json()
    decoded = jwt.decode(token["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256", "ES256"])
    options: dict[str, Any] = {"iss": {"essential": True, "value": rp.hub.url}, "aud": {"essential": True, "value": rp.client_id}}
    if acr is not None:
        options["acr"] = {"essential": True, "value": acr}
    claims = CodeIDToken(
        decoded.claims, decoded.header, options=options, params={"nonce": nonce, "client_id": rp.client_id, "access_token": token["access_token"]}
    )
    claims.validate()
    return claims


async def flow(rp: RelyingParty, browser: Browser, **params: str) -> tuple[httpx2.Response, dict[str, str]]:
    """Start an authorization request; the page the signed-in browser lands on, and what the RP kept."""
    url, kept = await rp.start(**params)
    return await browser.go(url), kept


async def consent_and_finish(rp: RelyingParty, browser: Browser, page: httpx2.Response, kept: dict[str, str]) -> dict[str, Any]:
    if page.status_code == 200 and "/consent" in page.text:
        page = await browser.submit(page, "/i/", decision="allow")
    assert page.status_code == 302, page.text[:1500]
    return await rp.finish(page.headers["location"], kept)


@pytest.fixture
async def rp(hub: Hub) -> RelyingParty:
    service = await hub.add_service(name="Garden Centre")
    found = RelyingParty(hub, service.client_id, service.client_secret)
    await found.discover()
    return found


async def test_discovery_lists_exactly_the_two_acr_values(hub: Hub, rp: RelyingParty) -> None:
    assert rp.metadata["acr_values_supported"] == [PASSWORD_ACR, MFA]
    assert {"acr", "amr"} <= set(rp.metadata["claims_supported"])


async def test_a_password_sign_in_is_pwd_at_the_password_level(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    page, kept = await flow(rp, browser)
    claims = await validated(rp, await consent_and_finish(rp, browser, page, kept), kept["nonce"], acr=PASSWORD_ACR)
    assert claims["amr"] == ["pwd"]


async def test_a_two_step_sign_in_is_mfa(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    totp, _ = await enrol(browser)
    await password_step(browser)
    await code_step(browser, later(totp))
    page, kept = await flow(rp, browser)
    claims = await validated(rp, await consent_and_finish(rp, browser, page, kept), kept["nonce"], acr=MFA)
    assert claims["amr"] == ["pwd", "otp", "mfa"]


async def test_asking_for_mfa_steps_a_password_session_up(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    totp, _ = await enrol(browser)
    # A password-only session (the one that set the factor up).
    async with hub.app[DB]() as db:
        [(sid, amr)] = (await db.execute(select(BrowserSession.sid, BrowserSession.amr))).all()
    assert amr == "pwd"

    page, kept = await flow(rp, browser, acr_values=MFA)
    assert page.status_code == 200 and "<strong>Garden Centre</strong> asks for two-step sign-in." in page.text
    assert 'autocomplete="one-time-code"' in page.text
    wrong = await browser.submit(page, "/sign-in/code", code="000000" if later(totp) != "000000" else "111111")
    assert wrong.status_code == 400
    page = await browser.go(page.url.path)  # the interaction's code page again
    done = await browser.submit(page, "/sign-in/code", code=later(totp))
    claims = await validated(rp, await consent_and_finish(rp, browser, done, kept), kept["nonce"], acr=MFA)
    assert claims["acr"] == MFA and "otp" in claims["amr"] and "pwd" in claims["amr"]
    # The same session, stepped up (its sid, and so its other services' logout, are kept).
    assert claims["sid"] == sid
    async with hub.app[DB]() as db:
        assert (await db.execute(select(BrowserSession.sid, BrowserSession.amr))).all() == [(sid, "pwd otp")]

    # Once stepped up, the next request for mfa needs nothing more.
    page, kept = await flow(rp, browser, acr_values=MFA)
    assert page.status_code == 302
    claims = await validated(rp, await rp.finish(page.headers["location"], kept), kept["nonce"], acr=MFA)


async def test_a_request_listing_both_levels_takes_the_session_as_it_is(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    await enrol(browser)
    page, kept = await flow(rp, browser, acr_values=f"{MFA} {PASSWORD_ACR}")
    await validated(rp, await consent_and_finish(rp, browser, page, kept), kept["nonce"], acr=PASSWORD_ACR)


async def test_a_person_without_a_second_factor_is_told_to_set_one_up(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    page, kept = await flow(rp, browser, acr_values=MFA)
    assert page.status_code == 403
    assert "Set up two-step sign-in first" in page.text
    assert '<a class="button" href="/account/two-step">Set up two-step sign-in</a>' in page.text
    back = page.text.split('href="/i/')[1].split('"')[0]

    totp, _ = await enrol(browser)
    # Setting it up in this session does not make the session two-step: the code is asked for.
    again = await browser.go(f"/i/{back}")
    assert "asks for two-step sign-in" in again.text
    done = await browser.submit(again, "/sign-in/code", code=later(totp))
    await validated(rp, await consent_and_finish(rp, browser, done, kept), kept["nonce"], acr=MFA)


async def test_prompt_none_cannot_step_up(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    await enrol(browser)
    await consent_and_finish(rp, browser, *(await flow(rp, browser)))
    page, _ = await flow(rp, browser, acr_values=MFA, prompt="none")
    assert page.status_code == 302
    assert location_params(page)["error"] == "interaction_required"


async def test_userinfo_carries_no_factors(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    totp, _ = await enrol(browser)
    await password_step(browser)
    await code_step(browser, later(totp))
    token = await consent_and_finish(rp, browser, *(await flow(rp, browser, scope="openid profile email")))
    info = (await hub.userinfo(token["access_token"])).json()
    assert info["email"] == "ann@example.com"
    assert not {"acr", "amr", "otp", "second_factor"} & set(info)
    # Nor does the profile that the API and sync give services.
    async with httpx2.AsyncClient(base_url=hub.url) as http:
        me = (await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token['access_token']}"})).json()
    assert me["profile"]["email"] == "ann@example.com"
    assert not {"acr", "amr", "otp", "second_factor"} & (set(me) | set(me["profile"]))


async def test_a_step_up_code_never_starts_a_session_without_the_password(hub: Hub, rp: RelyingParty, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    totp, recovery = await enrol(browser)
    page, _ = await flow(rp, browser, acr_values=MFA)
    assert "asks for two-step sign-in" in page.text
    # The session ends (signed out everywhere from another browser) while the code page is open.
    other = Browser(hub)
    try:
        await password_step(other)
        await code_step(other, recovery[0])
        await other.submit(await other.go("/account"), "/account/sessions/end-all")
    finally:
        await other.aclose()
    refused = await browser.submit(page, "/sign-in/code", code=later(totp))
    assert refused.status_code == 400 and "Sign in again" in refused.text
    assert (await browser.go("/account")).url.path == "/sign-in"
