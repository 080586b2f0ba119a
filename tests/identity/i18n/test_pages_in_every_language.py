"""Every page for people, rendered in every language straight from its template (no hub
started): the page says which language it is in and which way it is written, and, where the
catalog is translated, none of the English it was written in is left.

The English left on a page is found through the catalog itself: every message of a template
whose translation differs from it must not appear, as written in English, on the page."""

from __future__ import annotations

import datetime as dt
import html
import re
from importlib.resources import files
from types import SimpleNamespace

import pytest
from babel.messages.pofile import read_po

from identity import i18n
from identity.pages import environment
from tests.identity.i18n.made_up import german_as
from tests.identity.i18n.test_catalogs import NOT_YET_TRANSLATED

WHEN = dt.datetime(2026, 3, 9, 14, 5, tzinfo=dt.UTC)
PAGES = sorted(p.name for p in (files("identity.pages") / "templates").iterdir() if p.name.endswith(".html") and not p.name.startswith("_"))
ENV = environment()
LONG = "Donaudampfschifffahrtsgesellschaftskapitänswitwenrentenversicherungsanstalt"


def context() -> dict[str, object]:
    """One context for every page, with something in each part a page shows."""
    account = SimpleNamespace(
        status="pending_guardian", restricted_at=WHEN, delete_after=WHEN, guardian_email="g@example.com",
        email_verified=False, email="ann@example.com", marketing_news=True, marketing_competitions=False,
        marketing_offers=False, birthdate=dt.date(2012, 1, 2),
    )
    passkey = SimpleNamespace(id=1, name="Phone", created_at=WHEN, last_used_at=WHEN, user_handle="u", credential_id="c")
    step = {"status": "Received", "by": "you", "reason": None, "at": WHEN}
    request = {
        "id": "r1", "type": "Erasure", "target": "Forum", "status": "Received", "open": True, "overdue": False,
        "details": "Delete my posts", "received_at": WHEN, "due_at": WHEN, "history": [step],
    }
    return {
        "csrf_token": "t", "account": account, "values": {"email": "ann@example.com", "family_name": LONG},
        "errors": {}, "saved": True, "email_notice": "sent", "passkey_notice": "added", "two_step_notice": "off", "unlinked": True,
        "pending_email": {"email": "new@example.com"}, "resend": {"action": "/verify-email/resend", "button": "Send", "ask_email": True},
        "links": [{"name": "Forum", "status": "revoked", "ended": WHEN, "shares": [], "since": WHEN, "client_id": "forum"},
                  {"name": "Shop", "status": "active", "ended": None, "shares": [("email", "Your email address")], "since": WHEN, "client_id": "shop"}],
        "sessions": [{"device": "Firefox on Windows", "this": True, "signed_in": WHEN, "passkey": False, "two_step": True, "last_seen": WHEN, "sid": "s"}],
        "session_ended": True, "passkeys": [passkey], "passkey": passkey, "passkey_add": {"action": "/a", "options": "{}"},
        "passkey_fresh": False, "two_step": True, "fresh": False,
        "holding": [{"name": "Forum", "status": "active", "cancellation_url": None, "cancellation_instructions": None}],
        "blocking": [{"name": "Forum", "cancellation_url": None, "cancellation_instructions": None}],
        "waiting": [SimpleNamespace(service_name="Forum", type="erasure", id="r1", status="received", due_at=WHEN)],
        "cancelled": [{"name": "Shop"}, {"name": "Blog"}],
        "service": "Forum", "email": "ann@example.com", "scopes": [("email", "Your email address")],
        "uid": "u", "age_of_consent": 16, "fields": [], "title": "Title", "message": "Message", "detail": "invalid_request: x",
        "next": "/account", "signed_in": False, "contents": [], "blocks": [{"kind": "summary", "text": "x"}],
        "first": False, "codes": ["abcd-efgh"], "token": "t", "requests": [request], "opened": {"type": "Erasure", "target": "Forum", "due_at": WHEN},
        "types": {"access": "Access"}, "targets": [("hub", "One Sign In")], "totp": True, "step_up": True,
        "enrolled": True, "recovery_left": 3, "secret": "ABCD", "qr": "", "uri": "otpauth://", "retry": "/i/u",
        "error": None, "action": "/sign-in",
    }


def rendered(name: str, lang: str) -> str:
    ctx = context()
    if name == "unlink_confirm.html":
        ctx["service"] = SimpleNamespace(name="Forum", client_id="forum", cancellation_url=None, cancellation_instructions=None)
    with i18n.using(lang):
        return ENV.get_template(name).render(ctx)


@pytest.fixture(scope="module")
def english() -> dict[str, set[str]]:
    """Each template's messages as they read in English (placeholders and markup left out),
    by template, from messages.pot."""
    with (files("identity") / "locales" / "messages.pot").open("rb") as pot:
        template = read_po(pot)
    by_page: dict[str, set[str]] = {}
    for message in template:
        for path, _line in message.locations:
            if "/templates/" in path and message.id:
                first = message.id[0] if isinstance(message.id, tuple) else message.id
                # The longest run of plain words: what shows unchanged whatever fills the placeholders.
                runs = re.split(r"%\(\w+\)[sd]|<[^>]+>", first)
                by_page.setdefault(path.rsplit("/", 1)[1], set()).add(max(runs, key=len).strip())
    return by_page


@pytest.mark.parametrize("lang", i18n.LANGUAGES)
@pytest.mark.parametrize("name", PAGES)
def test_the_page_says_its_language_and_direction(name, lang):
    page = rendered(name, lang)
    direction = "rtl" if lang == "ar" else "ltr"
    assert re.search(rf'<html lang="{lang}" dir="{direction}">', page), page[:200]
    # The switcher names every language in itself, and this one as the current one.
    assert f'<span aria-current="true" lang="{lang}">' in page
    assert page.count('href="/language/') == len(i18n.LANGUAGES) - 1


@pytest.mark.parametrize("lang", [pytest.param(lang, marks=pytest.mark.xfail(reason="translation under way")) if lang in NOT_YET_TRANSLATED else lang for lang in i18n.LANGUAGES if lang != "en"])
def test_no_english_is_left_on_a_page_in_another_language(lang, english):
    left = {}
    for name in PAGES:
        text = html.unescape(re.sub(r"<[^>]+>", " ", rendered(name, lang)))
        text = re.sub(r"\s+", " ", text)
        shown = [words for words in english.get(name, set()) | english.get("base.html", set()) if len(words) > 12 and words in text]
        if shown:
            left[name] = sorted(shown)
    assert left == {}


def test_dates_and_numbers_are_written_the_language_s_way():
    assert "9 March 2026" in rendered("rights.html", "en")
    assert "9. März 2026" in rendered("rights.html", "de")
    assert "9 mars 2026" in rendered("rights.html", "fr")
    assert "4.000" in rendered("rights.html", "de") and "4,000" in rendered("rights.html", "en")
    assert "Shop und Blog" in rendered("cancel_accounts.html", "de")


def test_with_a_whole_catalog_no_english_is_left_on_any_page(monkeypatch, english):
    """The check above can pass: given a catalog translating everything (a pseudo-language that
    writes each message in capitals), no page keeps a word of its English."""
    german_as(monkeypatch, str.upper)
    for name in PAGES:
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", rendered(name, "de"))))
        assert [w for w in english.get(name, set()) | english.get("base.html", set()) if len(w) > 12 and w in text] == [], name
    assert "YOUR ACCOUNT" in rendered("account.html", "de")
