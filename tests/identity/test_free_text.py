"""Free text people type — names, address parts, rights-request details — refuses control
characters and invisible formatting characters (bidi overrides and isolates, zero-width
characters) through every channel that takes it: the profile API, the rights API, the account,
registration and rights pages, and the CLI (the support console's correction is in
tests/support_console/test_actions.py). A refusal names the field and the character, and
changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from identity.appkeys import DB
from identity.db.models import Account, RightsRequest
from schemas.text import check_multiline, check_single_line
from tests.cli import onesignin
from tests.rights_support import add_and_link, call, move, open_request, service_token
from tests.support import PASSWORD, Browser, Hub, RelyingParty, form, sign_in_through

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "Ann\u202eevil" shows as "Annlive"
LRI, PDI = "\u2066", "\u2069"
ZWSP, ZWJ, ZWNJ = "\u200b", "\u200d", "\u200c"


# The rule itself.


@pytest.mark.parametrize(
    "text",
    [
        "Ann",
        "Zoë O\u2019Brien-Łukasiewicz",
        "\u5f20\u4f1f",  # Chinese
        "\u041e\u043b\u044c\u0433\u0430",  # Cyrillic
        "\u0645\u06cc" + ZWNJ + "\u062e\u0648\u0627\u0647\u0645",  # Persian: ZWNJ between joining letters
        "\u0915\u094d" + ZWJ + "\u0937",  # Devanagari: ZWJ after a virama
        "\u0645\u062d\u0645\u062f",  # Arabic, right to left without any control
        "Ann \U0001f600",  # emoji
        "Ann\u00a0Marie",  # no-break space
    ],
)
def test_names_of_every_script_are_accepted(text: str) -> None:
    assert check_single_line(text) == text


def test_text_is_stored_composed() -> None:
    assert check_single_line("Jose\u0301") == "Jos\u00e9"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("Ann\x00", "U+0000 (NULL)"),
        ("Ann\nEvil", "U+000A (LINE FEED)"),
        ("Ann\tEvil", "U+0009 (TAB)"),
        ("Ann\x1b[31m", "U+001B"),
        ("Ann\x7f", "U+007F (DELETE)"),
        ("Ann\x85", "U+0085"),  # C1: NEXT LINE
        ("Ann\x9b31m", "U+009B"),  # C1: CONTROL SEQUENCE INTRODUCER
        (f"Ann{RLO}live", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("Ann\u202a", "U+202A (LEFT-TO-RIGHT EMBEDDING)"),
        ("Ann\u202d", "U+202D (LEFT-TO-RIGHT OVERRIDE)"),
        (f"{LRI}Ann{PDI}", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("Ann\u2068", "U+2068 (FIRST STRONG ISOLATE)"),
        (f"Ann{PDI}", "U+2069 (POP DIRECTIONAL ISOLATE)"),
        ("Ann\u200f", "U+200F (RIGHT-TO-LEFT MARK)"),
        (f"An{ZWSP}n", "U+200B (ZERO WIDTH SPACE)"),
        (f"An{ZWJ}n", "U+200D (ZERO WIDTH JOINER)"),  # no script needs it between Latin letters
        (f"An{ZWNJ}n", "U+200C (ZERO WIDTH NON-JOINER)"),
        ("An\u00adn", "U+00AD (SOFT HYPHEN)"),
        ("\ufeffAnn", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
        ("Ann\U000e0041", "U+E0041 (TAG LATIN CAPITAL LETTER A)"),
        ("Ann\u2028Evil", "U+2028 (LINE SEPARATOR)"),
        ("Ann\ue000", "U+E000"),  # private use
    ],
)
def test_controls_and_invisible_characters_are_refused_by_name(text: str, said: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_single_line(text)
    assert said in str(refused.value)
    position = next(i for i, c in enumerate(text) if f"U+{ord(c):04X}" in said) + 1
    assert f"character {position}" in str(refused.value)


def test_several_lines_take_line_feeds_only() -> None:
    assert check_multiline("Flat 2\r\n1 High Street") == "Flat 2\n1 High Street"
    assert check_multiline("Flat 2\n\nZoë Road\n") == "Flat 2\n\nZoë Road\n"
    with pytest.raises(ValueError, match=r"U\+000D \(CARRIAGE RETURN\) at character 7: the text may have several lines"):
        check_multiline("Flat 2\r1 High Street")
    with pytest.raises(ValueError, match=r"U\+202E .* at character 9"):
        check_multiline(f"Flat 2\n1{RLO}")


# The profile API.


async def _linked(hub: Hub, browser: Browser) -> tuple[str, RelyingParty]:
    """Ann, signed in to Store with every scope a profile change needs; her access token."""
    service = await hub.add_service(scope="openid profile email phone address")
    await hub.add_user(verified=True)
    rp = RelyingParty(hub, service.client_id, service.client_secret, scope="openid profile email phone address")
    await rp.discover()
    token, _ = await sign_in_through(rp, browser)
    return token["access_token"], rp


async def _account(hub: Hub) -> Account:
    async with hub.app[DB]() as db:
        account = await db.scalar(select(Account))
    assert account is not None
    return account


async def test_the_profile_api_refuses_spoofing_characters_field_by_field(hub: Hub, browser: Browser) -> None:
    token, _ = await _linked(hub, browser)
    before = await _account(hub)
    body = {
        "given_name": f"Ann{RLO}nimda",
        "family_name": "Exa\x00mple",
        "name": f"{LRI}Support{PDI}",
        "address": {"street_address": "1 High Street", "locality": f"Ox{ZWSP}ford", "country": "GB\x1b"},
    }
    answer = await call(hub, "PATCH", "/api/v1/me", token, json=body)
    assert answer.status_code == 422, answer.text
    problems = {p["field"]: p["message"] for p in answer.json()["problems"]}
    assert set(problems) == {"given_name", "family_name", "name", "address.locality", "address.country"}
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 4" in problems["given_name"]
    assert "U+0000 (NULL)" in problems["family_name"]
    assert "U+2066 (LEFT-TO-RIGHT ISOLATE)" in problems["name"]
    assert "U+200B (ZERO WIDTH SPACE)" in problems["address.locality"]
    assert "U+001B" in problems["address.country"]
    after = await _account(hub)
    assert (after.version, after.given_name, after.family_name, after.address) == (
        before.version, before.given_name, before.family_name, before.address,
    )


async def test_the_profile_api_takes_a_street_address_of_several_lines(hub: Hub, browser: Browser) -> None:
    token, _ = await _linked(hub, browser)
    persian = "\u0645\u06cc" + ZWNJ + "\u062e\u0648\u0627\u0647\u0645"
    answer = await call(
        hub, "PATCH", "/api/v1/me", token,
        json={"given_name": persian, "address": {"street_address": "Flat 2\r\n1 High Street", "locality": "Oxford"}},
    )
    assert answer.status_code == 200, answer.text
    profile = answer.json()["profile"]
    assert profile["given_name"] == persian
    assert profile["address"]["street_address"] == "Flat 2\n1 High Street"
    refused = await call(hub, "PATCH", "/api/v1/me", token, json={"address": {"locality": "Oxford\nEvil"}})
    assert refused.status_code == 422
    assert refused.json()["problems"][0]["field"] == "address.locality"


# The rights API: what the person asks for, and what the service answers them.


async def test_the_rights_api_refuses_spoofing_characters_in_details_and_reasons(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    forum = await add_and_link(hub, browser, "Forum", webhook_url="http://127.0.0.1:9/forum")
    refused = await open_request(hub, forum.person_token, type="erasure", service=forum.client_id, details=f"Delete {RLO}stsop ym")
    assert refused.status_code == 422, refused.text
    (problem,) = refused.json()["problems"]
    assert problem["field"] == "details" and "U+202E" in problem["message"]

    opened = await open_request(hub, forum.person_token, type="erasure", service=forum.client_id, details="Delete my posts\nand my replies")
    assert opened.status_code == 201, opened.text
    assert opened.json()["details"] == "Delete my posts\nand my replies"
    token = await service_token(forum.rp)
    moved = await move(hub, token, opened.json()["id"], "refused", f"Not {LRI}ours{PDI}")
    assert moved.status_code == 422, moved.text
    (problem,) = moved.json()["problems"]
    assert problem["field"] == "reason" and "U+2066" in problem["message"]
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(RightsRequest)) == 1
        assert await db.scalar(select(RightsRequest.status)) == "received"


# The pages.


async def test_the_account_page_refuses_spoofing_characters_and_keeps_the_details(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    before = await _account(hub)
    page = await browser.go("/account")
    f = form(page.text, "/account/details")
    answer = await browser.http.post(f.action, data=f.fields | {"given_name": f"Ann{RLO}nimda", "locality": f"Ox{ZWJ}ford"})
    assert answer.status_code == 400
    assert "Remove the invisible character U+202E (RIGHT-TO-LEFT OVERRIDE) at character 4" in answer.text
    assert "U+200D (ZERO WIDTH JOINER)" in answer.text
    after = await _account(hub)
    assert (after.version, after.given_name, after.address) == (before.version, before.given_name, before.address)


async def test_registration_refuses_spoofing_characters(hub: Hub, browser: Browser) -> None:
    page = await browser.go("/register")
    f = form(page.text, "/register")
    values = {"email": "new@example.com", "password": PASSWORD, "given_name": "Nia", "family_name": f"New{ZWSP}comer", "birthdate": "1990-05-17"}
    answer = await browser.http.post(f.action, data=f.fields | values)
    assert answer.status_code == 400
    assert "U+200B (ZERO WIDTH SPACE)" in answer.text
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(Account)) == 0


async def test_the_rights_page_refuses_spoofing_characters_in_the_details(hub: Hub, browser: Browser) -> None:
    await hub.add_user(verified=True)
    await browser.sign_in()
    page = await browser.go("/account/rights")
    f = form(page.text, "/account/rights")
    answer = await browser.http.post(
        f.action, data=f.fields | {"type": "access", "target": "hub", "details": f"Everything{RLO}", "current_password": PASSWORD}
    )
    assert answer.status_code == 400
    assert "U+202E (RIGHT-TO-LEFT OVERRIDE)" in answer.text
    async with hub.app[DB]() as db:
        assert await db.scalar(select(func.count()).select_from(RightsRequest)) == 0


# The CLI.


@pytest.mark.e2e
def test_the_cli_refuses_spoofing_characters_in_a_name(database_url: str, tmp_path: Path) -> None:
    env = os.environ | {
        "ONESIGNIN_DATA_DIR": str(tmp_path),
        "ONESIGNIN_DATABASE_URL": database_url,
        "ONESIGNIN_SECRET_KEY": "c" * 40,
        "ONESIGNIN_ARGON2_MEMORY_COST": "8192",
        "ONESIGNIN_ARGON2_TIME_COST": "1",
    }
    args = ["users", "add", "--email", "ann@example.com", "--password", PASSWORD, "--given-name", f"Ann{RLO}nimda"]
    done = onesignin(env, *args)
    assert done.returncode != 0 and done.stdout == ""
    assert "--given-name: Remove the invisible character U+202E (RIGHT-TO-LEFT OVERRIDE) at character 4" in done.stderr
    reason = ["rights", "status", "--id", "00000000-0000-0000-0000-000000000000", "--status", "refused", "--reason", f"No{RLO}"]
    done = onesignin(env, *reason)
    assert done.returncode != 0 and "--reason: Remove the invisible character U+202E" in done.stderr
