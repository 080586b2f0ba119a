"""Every page for people in a real headless Chromium at a phone's width (390 px) and a
desktop's (1280 px), in Arabic (right to left) and in a German written with the longest
words (each word of each message made a 40-odd letter compound): nothing reaches past either
edge of the screen. The pages are rendered from their templates and loaded with the real
stylesheet (no hub started)."""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path

import pytest
from playwright.async_api import Browser as Chromium

from tests.identity.i18n.test_pages_in_every_language import PAGES, rendered
from tests.conftest import CHROMIUM
from tests.identity.i18n.made_up import german_as

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


def _compound(part: str) -> str:
    """Each word of ``part`` as a long German compound."""
    return re.sub(r"[^\W\d_]{3,}", lambda found: found.group(0).capitalize() + "donaudampfschifffahrtsgesellschaftskapitän", part)


@pytest.fixture
def long_german(monkeypatch: pytest.MonkeyPatch) -> None:
    german_as(monkeypatch, _compound)


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
