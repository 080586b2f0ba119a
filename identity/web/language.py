"""Which language a page speaks, chosen per request in this order:

1. the OIDC ``ui_locales`` of the authorization request the page belongs to (OIDC Core
   3.1.2.1), kept with the interaction so its sign-in and consent pages speak it;
2. the language the person picked with the switcher on every page (a link, no JavaScript),
   kept in a cookie for a year;
3. the signed-in person's ``locale`` claim;
4. the browser's ``Accept-Language`` (Babel's ``negotiate_locale``);
5. the operator's ``ONESIGNIN_DEFAULT_LOCALE``.

The middleware sets the choice for the request's task (:func:`identity.i18n.set_current`),
looking up the interaction's ``ui_locales`` for the pages of one (``/i/{uid}``, and pages
leading back to it through ``?next=``); the signed-in person's claim is spoken once
``identity.web.browser.current`` has found them (:func:`speak_account`). A later choice
overrides an earlier one only when it stands higher in the order above. A picked language
does not override ``ui_locales`` on that request's own pages: the service asked for it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar

from aiohttp import web
from babel import negotiate_locale

from identity import i18n
from identity.i18n import supported
from identity.appkeys import DB, SETTINGS
from identity.oidc import interactions
from identity.web.cookies import LANGUAGE
from identity.web.middleware import is_api
from identity.web.responses import redirect, safe_next

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: How strongly the running request's language was chosen (the step's number; lower wins).
UI_LOCALES, PICKED, CLAIM, BROWSER, DEFAULT = 1, 2, 3, 4, 5
_STRENGTH: ContextVar[int] = ContextVar("onesignin_language_strength", default=DEFAULT)
#: The page's own address, for the switcher's links back to it.
_HERE: ContextVar[str] = ContextVar("onesignin_here", default="/account")
#: A year, in seconds: how long a picked language is kept.
KEEP = 365 * 24 * 3600


def first_supported(tags: Iterable[str], languages: Iterable[str] = i18n.LANGUAGES) -> str | None:
    """The first of ``tags`` (in the order given, as ``ui_locales`` lists them) that is supported."""
    for tag in tags:
        if found := supported(tag, languages):
            return found
    return None


def from_browser(header: str | None, languages: Iterable[str] = i18n.LANGUAGES) -> str | None:
    """The best supported language of an ``Accept-Language`` header (RFC 9110 12.5.4)."""
    if not header:
        return None
    weighted = []
    for position, item in enumerate(header.split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and tag != "*" and quality > 0:
            weighted.append((-quality, position, tag.strip()))
    preferred = [tag.replace("-", "_") for _q, _p, tag in sorted(weighted)]
    return negotiate_locale(preferred, list(languages), sep="_") or first_supported(preferred, languages)


def choose(request: web.Request) -> tuple[str, int]:
    """The language of a request before the database is asked: picked, browser, default."""
    if picked := supported(LANGUAGE.read(request)):
        return picked, PICKED
    if browser := from_browser(request.headers.get("Accept-Language")):
        return browser, BROWSER
    return request.config_dict[SETTINGS].default_locale, DEFAULT


def speak(lang: str | None, strength: int) -> None:
    """Speak ``lang`` for the rest of the request if it was chosen more strongly than now."""
    if lang and lang in i18n.LANGUAGES and strength <= _STRENGTH.get():
        i18n.set_current(lang)
        _STRENGTH.set(strength)


def speak_account(locale_claim: str | None) -> None:
    """The signed-in person's ``locale`` claim, unless ui_locales or the switcher chose."""
    speak(supported(locale_claim), CLAIM)


def speak_interaction(ui_locales: str | None) -> None:
    """The ``ui_locales`` of the authorization request the page belongs to."""
    speak(first_supported((ui_locales or "").split()), UI_LOCALES)


_INTERACTION_PATH = re.compile(r"/i/([A-Za-z0-9_-]{1,64})(?:/|$)")


def _interaction_uid(request: web.Request) -> str | None:
    """The interaction a page belongs to: its own path (``/i/{uid}``), or the page it leads
    back to (``?next=/i/{uid}/resume``, the second step of its sign-in)."""
    for where in (request.path, request.query.get("next", "")):
        if found := _INTERACTION_PATH.match(where):
            return found.group(1)
    return None


async def _ui_locales(request: web.Request) -> str | None:
    if request.path == "/authorize":
        return request.query.get("ui_locales")
    uid = _interaction_uid(request)
    if uid is None:
        return None
    async with request.config_dict[DB]() as db:
        return await interactions.ui_locales(db, uid)


def here() -> str:
    return _HERE.get()


@web.middleware
async def language(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Choose the request's language (the API and protocol endpoints speak English)."""
    if is_api(request):
        i18n.set_current("en")
        _STRENGTH.set(UI_LOCALES)
        return await handler(request)
    lang, strength = choose(request)
    i18n.set_current(lang)
    _STRENGTH.set(strength)
    speak_interaction(await _ui_locales(request))
    _HERE.set(request.path_qs)
    return await handler(request)


async def pick(request: web.Request) -> web.StreamResponse:
    """``GET /language/{lang}?next=...``: keep the picked language and go back to the page."""
    lang = supported(request.match_info["lang"])
    response = redirect(safe_next(request.query.get("next")), 303)
    if lang is not None:
        LANGUAGE.set(request, response, lang, max_age=KEEP)
    return response


@web.middleware
async def console_language(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The support console speaks English or German: the picked language or the browser's
    among those two, else English."""
    lang = (
        supported(LANGUAGE.read(request), i18n.CONSOLE_LANGUAGES)
        or from_browser(request.headers.get("Accept-Language"), i18n.CONSOLE_LANGUAGES)
        or "en"
    )
    i18n.set_current(lang)
    return await handler(request)
