"""Every page for people in a real headless Chromium at a phone's width (390 px) and a
desktop's (1280 px), in Arabic (right to left) and in a German written with the longest
words (each word of each message made a 40-odd letter compound): nothing reaches past either
edge of the screen. The pages are rendered from their templates and loaded with the real
stylesheet (no hub started)."""

from __future__ import annotations

import os
import re
from importlib.resources import files
from io import BytesIO
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from playwright.async_api import Browser as Chromium

from identity import i18n
from tests.identity.i18n.test_pages_in_every_language import PAGES, rendered
from tests.conftest import CHROMIUM

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason=f"{CHROMIUM} is missing"),
]

STYLE = (files("identity.pages") / "static" / "style.css").read_text("utf-8")
#: What reaches past the left or right edge of the screen, and how wide the document is.
OUTSIDE = """() => {
  const width = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll('header *, main *, footer *')]
    .filter(e => e.getClientRects().length && !e.closest('.visually-hidden'))
    .filter(e => { const r = e.getBoundingClientRect(); return r.right > width + 0.5 || r.left < -0.5; })
    .map(e => e.tagName + (e.id ? '#' + e.id : '') + ':' + (e.textContent || '').trim().slice(0, 40));
  return {scroll: document.documentElement.scrollWidth, width, out};
}"""


def _compound(text: str) -> str:
    """Each word of ``text`` as a long German compound; placeholders and markup kept."""
    def word(found: re.Match[str]) -> str:
        return found.group(0).capitalize() + "donaudampfschifffahrtsgesellschaftskapitän"

    parts = re.split(r"(%\(\w+\)[sd]|<[^>]+>|%%)", text)
    return "".join(p if re.fullmatch(r"%\(\w+\)[sd]|<[^>]+>|%%", p) else re.sub(r"[^\W\d_]{3,}", word, p) for p in parts)


@pytest.fixture
def long_german(monkeypatch: pytest.MonkeyPatch) -> None:
    with (files("identity") / "locales" / "messages.pot").open("rb") as pot:
        template = read_po(pot)
    catalog = Catalog(locale="de", domain="messages")
    for m in template:
        if m.id:
            catalog.add(m.id, tuple(_compound(i) for i in m.id) if isinstance(m.id, tuple) else _compound(m.id), context=m.context)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    stretched = i18n.Translations(compiled, domain="messages")
    real = i18n.translations
    monkeypatch.setattr(i18n, "translations", lambda lang, domain="messages": stretched if lang == "de" else real(lang, domain))



async def test_no_page_reaches_past_the_screen_in_long_german_or_arabic(chromium: Chromium, long_german: None) -> None:
    pages = {(name, lang): rendered(name, lang).replace('<link rel="stylesheet" href="/static/style.css">', f"<style>{STYLE}</style>") for name in PAGES for lang in ("de", "ar")}
    assert "Accountdonaudampfschifffahrtsgesellschaftskapitän" in pages[("account.html", "de")]
    assert '<html lang="ar" dir="rtl">' in pages[("account.html", "ar")]
    tab = await chromium.new_page()
    outside = {}
    for width in (390, 1280):
        await tab.set_viewport_size({"width": width, "height": 800})
        for (name, lang), page in pages.items():
            await tab.set_content(page, wait_until="load")
            found = await tab.evaluate(OUTSIDE)
            if found["scroll"] > found["width"] or found["out"]:
                outside[(name, lang, width)] = found
    await tab.close()
    assert outside == {}
