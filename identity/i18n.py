"""The person's language: Babel message catalogs and the calls that translate through them.

The catalogs are the ``.po`` files under ``identity/locales/<lang>/LC_MESSAGES/`` (domain
``messages`` for pages and mail, ``console`` for the support console, English and German only).
They are read with :func:`babel.messages.pofile.read_po` and compiled in memory the first time a
language is used, so a fresh install needs no compile step. Fuzzy and empty entries fall back to
the English msgid.

Which language a request speaks is held in one :class:`~contextvars.ContextVar` set by the
pages' middleware for the request's task (:func:`set_current`); the Jinja2 ``i18n`` extension and the
Python calls below (``_``, ``ngettext``, ``pgettext``, ``lazy_gettext``) both read it, so one
template environment serves every language. A mail builder decorated with
:func:`in_their_language` builds its mail in the recipient's language (their ``locale`` claim),
else in the page's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from functools import cache
from importlib.resources import files
from io import BytesIO
from typing import Any, ParamSpec, TypeVar

import jinja2
from babel import Locale, UnknownLocaleError, dates, lists, numbers
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import LazyProxy, Translations

__all__ = [
    "CONSOLE_LANGUAGES",
    "DEFAULT",
    "LANGUAGES",
    "RTL",
    "_",
    "console_gettext",
    "console_lazy",
    "console_ngettext",
    "current",
    "format_day",
    "format_list",
    "format_moment",
    "format_number",
    "format_percent",
    "gettext",
    "in_their_language",
    "install",
    "language_choices",
    "lazy_gettext",
    "lazy_ngettext",
    "ngettext",
    "npgettext",
    "pgettext",
    "pgettext_lazy",
    "set_current",
    "speaking",
    "supported",
    "text_direction",
    "translate",
    "translations",
    "using",
]

# Every language the hub speaks to people in, in the order the switcher lists them.
LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es", "it", "nl", "pl", "pt", "sv", "ar")
# The support console speaks only these.
CONSOLE_LANGUAGES: tuple[str, ...] = ("en", "de")
# Languages written right to left.
RTL: frozenset[str] = frozenset({"ar"})
DEFAULT = "en"

P = ParamSpec("P")
R = TypeVar("R")

_CURRENT: ContextVar[str] = ContextVar("onesignin_locale", default=DEFAULT)


@cache
def translations(lang: str, domain: str = "messages") -> Translations:
    """The compiled catalog of ``lang`` in ``domain`` (an empty one for English or a missing file)."""
    path = files("identity") / "locales" / lang / "LC_MESSAGES" / f"{domain}.po"
    if lang == DEFAULT or not path.is_file():
        return Translations(domain=domain)
    with path.open("rb") as po:
        catalog = read_po(po, locale=lang, domain=domain)
    compiled = BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=domain)


def current() -> str:
    """The language of the running request (or mail being built)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(lang: str) -> Iterator[str]:
    """Speak ``lang`` inside the block, then whatever was spoken before."""
    token = _CURRENT.set(lang if lang in LANGUAGES else DEFAULT)
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def supported(tag: str | None, languages: Iterable[str] = LANGUAGES) -> str | None:
    """The supported language a BCP 47 tag names (``de-AT`` is ``de``), or None."""
    if not tag:
        return None
    try:
        parsed = Locale.parse(tag.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None
    return parsed.language if parsed.language in languages else None


def speaking(locale_claim: str | None) -> contextlib.AbstractContextManager[str]:
    """Speak the language of a person's ``locale`` claim inside the block, or, when it names
    none the hub speaks, the language already spoken (the page's that caused a mail)."""
    return using(supported(locale_claim) or current())


def in_their_language(build: Callable[P, R]) -> Callable[P, R]:
    """A mail builder taking a ``locale=`` keyword (the recipient's ``locale`` claim, or None)
    that builds the mail in that language (:func:`speaking`)."""

    @functools.wraps(build)
    def built(*args: P.args, **kwargs: P.kwargs) -> R:
        locale_claim = kwargs.pop("locale", None)
        with speaking(locale_claim):  # type: ignore[arg-type]
            return build(*args, **kwargs)

    return built


def set_current(lang: str) -> None:
    """Speak ``lang`` for the rest of the running task (a request's middleware)."""
    _CURRENT.set(lang if lang in LANGUAGES else DEFAULT)


def gettext(message: str, **variables: Any) -> str:
    text = translations(current()).ugettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    text = translations(current()).ungettext(singular, plural, n)
    return text % {"num": n, **variables}


def pgettext(context: str, message: str, **variables: Any) -> str:
    text = translations(current()).upgettext(context, message)
    return text % variables if variables else text


def npgettext(context: str, singular: str, plural: str, n: int, **variables: Any) -> str:
    text = translations(current()).unpgettext(context, singular, plural, n)
    return text % {"num": n, **variables}


def lazy_gettext(message: str, **variables: Any) -> LazyProxy:
    """A message translated when it is shown, in the language of that moment (module constants)."""
    return LazyProxy(gettext, message, enable_cache=False, **variables)


_ = gettext


def pgettext_lazy(context: str, message: str, **variables: Any) -> LazyProxy:
    return LazyProxy(pgettext, context, message, enable_cache=False, **variables)


def format_number(number: float, *, significant: int | None = None) -> str:
    """``number`` written the way the current language writes numbers (4,000 / 4.000 / ٤٬٠٠٠);
    with ``significant``, rounded to that many significant digits first (1.23 / 1,23)."""
    if significant is None:
        return numbers.format_decimal(number, locale=_formats())
    return numbers.format_decimal(float(f"{number:.{significant}g}"), locale=_formats(), decimal_quantization=False)


def format_percent(ratio: float, *, decimals: int = 0, exact: bool = True) -> str:
    """``ratio`` (0.5) as a percentage the current language's way (50.0% / 50,0 %), with
    ``decimals`` decimal places: always (``exact``), or at most that many."""
    pattern = Locale.parse(_formats()).percent_formats[None].pattern
    if decimals:
        pattern = pattern.replace("0", "0." + ("0" if exact else "#") * decimals, 1)
    return numbers.format_percent(ratio, format=pattern, locale=_formats())


def translate(template: str, params: Mapping[str, Any]) -> str:
    """A message template from ``schemas`` (``schemas.messages.Translate``) in the current language."""
    text = translations(current()).ugettext(template)
    return text % dict(params) if params else text


#: The regional variant whose conventions format dates and numbers for a language.
FORMATS: dict[str, str] = {"en": "en_GB"}


def _formats() -> str:
    lang = current()
    return FORMATS.get(lang, lang)


def format_list(items: Iterable[str]) -> str:
    """``items`` joined the way the current language lists things ("A, B and C", "A, B und C")."""
    return lists.format_list([str(i) for i in items], locale=_formats())


def format_day(value: dt.date | dt.datetime, format: str = "medium") -> str:
    """A day as the current language writes it ("6 December 2026", "6. Dezember 2026")."""
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.UTC).date() if value.tzinfo else value.date()
    return dates.format_date(value, format=format, locale=_formats())


def format_moment(value: dt.datetime) -> str:
    """A moment in UTC as the current language writes a date and time, with its zone."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    # Translators: a date and time, then the time zone, e.g. "6 Dec 2026, 14:05 UTC".
    lang = _formats()
    moment = (
        dates.get_datetime_format("medium", locale=lang)
        .replace("'", "")
        .replace("{0}", dates.format_time(value, "short", tzinfo=dt.UTC, locale=lang))
        .replace("{1}", dates.format_date(value.astimezone(dt.UTC).date(), "medium", locale=lang))
    )
    return pgettext("date and time in a zone", "%(moment)s UTC", moment=moment)


def language_choices() -> list[tuple[str, str]]:
    """Each language with its own name for itself, for the switcher on every page."""
    return [(lang, Locale.parse(lang).get_display_name(lang).capitalize()) for lang in LANGUAGES]


def text_direction() -> str:
    return "rtl" if current() in RTL else "ltr"


def install(env: jinja2.Environment, domain: str = "messages") -> None:
    """Give a template environment the ``i18n`` extension, the translation calls reading the
    current language, and Babel's formatting as filters (``date``, ``datetime``, ``number``,
    ``names``)."""
    env.add_extension("jinja2.ext.i18n")
    env.policies["ext.i18n.trimmed"] = True

    def gettext_in(message: str) -> str:
        return translations(current(), domain).ugettext(message)

    def ngettext_in(singular: str, plural: str, n: int) -> str:
        return translations(current(), domain).ungettext(singular, plural, n)

    def pgettext_in(context: str, message: str) -> str:
        return translations(current(), domain).upgettext(context, message)

    def npgettext_in(context: str, singular: str, plural: str, n: int) -> str:
        return translations(current(), domain).unpgettext(context, singular, plural, n)

    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext_in, ngettext_in, newstyle=True, pgettext=pgettext_in, npgettext=npgettext_in
    )
    # Context filters: Jinja never folds them into a template at compile time (``4000|number``
    # would otherwise be written once, in whichever language compiled the template first).
    env.filters["date"] = jinja2.pass_context(lambda _ctx, value, format="medium": format_day(value, format))
    env.filters["datetime"] = jinja2.pass_context(lambda _ctx, value: format_moment(value))
    env.filters["number"] = jinja2.pass_context(lambda _ctx, value: format_number(value))
    env.filters["names"] = jinja2.pass_context(lambda _ctx, value: format_list(value))
    env.globals["current_language"] = current
    env.globals["text_direction"] = text_direction
    env.globals["language_choices"] = language_choices


def console_gettext(message: str, **variables: Any) -> str:
    """A message of the support console (domain ``console``, English and German)."""
    text = translations(current(), "console").ugettext(message)
    return text % variables if variables else text


def console_ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    """A console message with a count (``%(num)d``), in the form the count takes."""
    text = translations(current(), "console").ungettext(singular, plural, n)
    return text % {"num": n, **variables}


def console_lazy(message: str, **variables: Any) -> LazyProxy:
    return LazyProxy(console_gettext, message, enable_cache=False, **variables)


def lazy_ngettext(singular: str, plural: str, n: int, **variables: Any) -> LazyProxy:
    return LazyProxy(ngettext, singular, plural, n, enable_cache=False, **variables)
