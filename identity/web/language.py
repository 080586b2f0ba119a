"""Which language a page speaks, chosen per request in this order:

1. the OIDC ``ui_locales`` of the authorization request the page belongs to (OIDC Core
   3.1.2.1), kept with the interaction so its sign-in and consent pages speak it;
2. the language the person picked with the switcher on every page (a link, no JavaScript),
   kept in a cookie for a year;
3. the signed-in person's ``locale`` claim;
4. the browser's ``Accept-Language`` (Babel's ``negotiate_locale``);
5. the operator's ``ONESIGNIN_DEFAULT_LOCALE``.

The middleware sets the choice for the request's task (:func:`identity.i18n.set_current`);
steps 1 and 3 need the database and are taken by the handlers that have it
(:func:`speak_interaction`, :func:`speak_account`), which override a weaker choice only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar

from aiohttp import web
from babel import Locale, UnknownLocaleError, negotiate_locale

from identity import i18n
from identity.appkeys import SETTINGS
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


def supported(tag: str | None, languages: Iterable[str] = i18n.LANGUAGES) -> str | None:
    """The supported language a BCP 47 tag names (``de-AT`` is ``de``), or None."""
    if not tag:
        return None
    try:
        parsed = Locale.parse(tag.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None
    return parsed.language if parsed.language in languages else None


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


def here() -> str:
    return _HERE.get()


@web.middleware
async def language(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Choose the request's language (the API and protocol endpoints speak English)."""
    lang, strength = ("en", DEFAULT) if is_api(request) else choose(request)
    i18n.set_current(lang)
    _STRENGTH.set(strength)
    _HERE.set(request.path_qs)
    return await handler(request)


async def pick(request: web.Request) -> web.StreamResponse:
    """``GET /language/{lang}?next=...``: keep the picked language and go back to the page."""
    lang = supported(request.match_info["lang"])
    response = redirect(safe_next(request.query.get("next")), 303)
    if lang is not None:
        LANGUAGE.set(request, response, lang, max_age=KEEP)
    return response
