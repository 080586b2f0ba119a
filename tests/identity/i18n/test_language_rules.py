"""The rules that turn what a browser and a service say into a language the hub speaks."""

from __future__ import annotations

import pytest

from identity.i18n import supported
from identity.web.language import first_supported, from_browser


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "fr"),
        ("da, en-GB;q=0.8, de;q=0.9", "de"),
        ("de;q=0, es", "es"),
        ("pt-BR", "pt"),
        ("ar-EG,ar;q=0.9", "ar"),
        ("zh-CN, ja", None),
        ("*", None),
        ("de;q=x, nl", "nl"),
        ("", None),
    ],
)
def test_the_browser_s_languages_in_its_order_of_preference(header, expected):
    assert from_browser(header) == expected


def test_tags_name_a_language_the_hub_speaks_or_none():
    assert supported("de-AT") == "de" and supported("sv_SE") == "sv" and supported("ar") == "ar"
    assert supported("zh-Hant") is None and supported("") is None and supported("not a tag!") is None
    # ui_locales lists preferences, most preferred first: the first the hub speaks wins.
    assert first_supported("ja it-IT de".split()) == "it"
    assert first_supported([]) is None
