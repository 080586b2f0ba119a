"""A browser and its operating system in plain words, from a User-Agent header, for the person's
list of where they are signed in. A few patterns, most specific first; anything else is named
generically rather than guessed."""

from __future__ import annotations

import re

from identity.i18n import _

#: (pattern, name): the first match wins; Edge and Opera also say Chrome, Chrome also says Safari.
BROWSERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name)
    for p, name in (
        (r"Edg(e|A|iOS)?/", "Edge"),
        (r"(OPR|Opera)/", "Opera"),
        (r"SamsungBrowser/", "Samsung Internet"),
        (r"(Firefox|FxiOS)/", "Firefox"),
        (r"(Chrome|Chromium|CriOS)/", "Chrome"),
        (r"Version/[0-9.]+ (Mobile/\S+ )?Safari/", "Safari"),
    )
)
SYSTEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), name)
    for p, name in (
        (r"iPhone", "iPhone"),
        (r"iPad", "iPad"),
        (r"Android", "Android"),
        (r"CrOS", "ChromeOS"),
        (r"Windows", "Windows"),
        (r"Mac OS X|Macintosh", "macOS"),
        (r"Linux", "Linux"),
    )
)


def describe(user_agent: str | None) -> str:
    """e.g. "Firefox on Windows", "Safari on iPhone", "A browser on Linux", "An unknown browser"."""
    ua = user_agent or ""
    browser = next((name for pattern, name in BROWSERS if pattern.search(ua)), None)
    system = next((name for pattern, name in SYSTEMS if pattern.search(ua)), None)
    if browser and system:
        # Translators: a web browser and the system it runs on, e.g. "Firefox on Windows".
        return _("%(browser)s on %(system)s", browser=browser, system=system)
    if browser:
        return browser
    if system:
        return _("A browser on %(system)s", system=system)
    return _("An unknown browser")
