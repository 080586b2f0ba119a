"""German replaced by a made-up language for a test: every message of ``messages.pot`` with its
words rewritten and its placeholders and markup kept, so a test can tell a translated page from
an English one without depending on the real German catalog."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.resources import files
from io import BytesIO

import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from identity import i18n

#: What a translation keeps as it is: placeholders, markup, a literal percent sign.
KEPT = re.compile(r"(%\(\w+\)[sd]|<[^>]+>|%%)")


def rewritten(text: str, words: Callable[[str], str]) -> str:
    """``text`` with ``words`` applied to everything between its placeholders and markup."""
    return "".join(part if KEPT.fullmatch(part) else words(part) for part in KEPT.split(text))


def german_as(monkeypatch: pytest.MonkeyPatch, words: Callable[[str], str]) -> None:
    """Have ``de`` translate every message by rewriting its words with ``words``."""
    with (files("identity") / "locales" / "messages.pot").open("rb") as pot:
        template = read_po(pot)
    catalog = Catalog(locale="de", domain="messages")
    for m in template:
        if m.id:
            string = tuple(rewritten(i, words) for i in m.id) if isinstance(m.id, tuple) else rewritten(m.id, words)
            catalog.add(m.id, string, context=m.context)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    made_up = i18n.Translations(compiled, domain="messages")
    real = i18n.translations
    monkeypatch.setattr(i18n, "translations", lambda lang, domain="messages": made_up if lang == "de" else real(lang, domain))
