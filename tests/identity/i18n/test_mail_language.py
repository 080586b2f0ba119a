"""A mail is written in its recipient's language (their ``locale`` claim), else in the language
of the page that caused it, and says so in ``Content-Language``; its dates are written that
language's way. Built directly (no hub), with a catalog that translates everything."""

from __future__ import annotations

import datetime as dt

import pytest

from identity import i18n
from identity.accounts import links, new_browser
from identity.settings import Settings
from tests.identity.i18n.made_up import german_as


@pytest.fixture
def translated(monkeypatch: pytest.MonkeyPatch) -> None:
    """German as a pseudo-language that writes every message in capitals."""
    german_as(monkeypatch, str.upper)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, issuer="https://hub.example")


def test_the_recipient_s_locale_claim_chooses_the_mail_s_language(translated, settings):
    with i18n.using("fr"):  # the page that caused it
        mail = links.reset_message(settings, "ann@example.com", "s3cret", locale="de-AT")
        assert i18n.current() == "fr"
    assert mail["Content-Language"] == "de" and mail["Subject"] == "RESET YOUR PASSWORD"
    assert "CHOOSE A NEW PASSWORD FOR YOUR ONE SIGN IN ACCOUNT" in mail.get_content()
    assert "https://hub.example/reset-password/confirm?token=s3cret" in mail.get_content()


@pytest.mark.parametrize("claim", [None, "zh-Hant", ""])
def test_without_a_claim_the_hub_speaks_the_mail_goes_in_the_page_s_language(translated, settings, claim):
    with i18n.using("de"):
        mail = links.reset_message(settings, "ann@example.com", "s", locale=claim)
    assert mail["Content-Language"] == "de" and mail["Subject"] == "RESET YOUR PASSWORD"
    with i18n.using("es"):
        mail = links.reset_message(settings, "ann@example.com", "s", locale=claim)
    spanish = i18n.translations("es").gettext("Reset your password")
    assert mail["Content-Language"] == "es" and mail["Subject"] == spanish != "Reset your password"


def test_a_mail_s_dates_are_written_the_language_s_way(settings):
    when = dt.datetime(2026, 3, 9, 14, 5, tzinfo=dt.UTC)
    with i18n.using("de"):
        german = new_browser._message(settings, "ann@example.com", when, "Firefox").get_content()
    with i18n.using("en"):
        english = new_browser._message(settings, "ann@example.com", when, "Firefox").get_content()
    assert "09.03.2026, 14:05 UTC" in german and "9 Mar 2026, 14:05 UTC" in english
    with i18n.using("de"):
        guardian = links.guardian_message(settings, "g@example.com", dt.date(2014, 5, 1), when, "s").get_content()
    assert "1. Mai 2014" in guardian and "9. März 2026" in guardian
