"""Every language's catalog translates every message of the templates (``messages.pot``,
``console.pot``), with nothing fuzzy and the same placeholders, and the templates hold what the
sources ask for today.

``NOT_YET_TRANSLATED`` names the languages whose translation is still being written: the test
stays strict for every language in ``identity.i18n.LANGUAGES`` that is not listed there."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from identity import i18n

#: Languages whose catalogs are still being translated (empty: every language is checked).
NOT_YET_TRANSLATED: tuple[str, ...] = ()

LOCALES = Path(str(files("identity") / "locales"))
ROOT = LOCALES.parent.parent
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def _read(path: Path, lang: str | None = None) -> Catalog:
    with path.open("rb") as po:
        return read_po(po, locale=lang)


def _strict(langs: tuple[str, ...]) -> list[object]:
    return [
        pytest.param(lang, marks=pytest.mark.xfail(reason="translation under way", strict=False))
        if lang in NOT_YET_TRANSLATED
        else lang
        for lang in langs
        if lang != i18n.DEFAULT
    ]


def _problems(template: Catalog, catalog: Catalog) -> list[str]:
    found = []
    for message in template:
        if not message.id:
            continue
        key = (message.id, message.context) if message.context else message.id
        translated = catalog.get(message.id, context=message.context)
        if translated is None:
            found.append(f"missing: {key!r}")
            continue
        if translated.fuzzy:
            found.append(f"fuzzy: {key!r}")
        strings = translated.string if isinstance(translated.string, tuple) else (translated.string,)
        if not all(strings):
            found.append(f"untranslated: {key!r}")
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        wanted = {p for i in ids for p in PLACEHOLDER.findall(i)}
        for s in strings:
            # A plural form may leave the number out ("one" in words), never add or rename one.
            if not set(PLACEHOLDER.findall(s)) <= wanted or not (wanted - {"num"}) <= set(PLACEHOLDER.findall(s)):
                found.append(f"placeholders differ: {key!r} -> {s!r}")
    return found


@pytest.mark.parametrize("lang", _strict(i18n.LANGUAGES))
def test_every_message_of_the_pages_and_mail_is_translated(lang):
    template = _read(LOCALES / "messages.pot")
    catalog = _read(LOCALES / lang / "LC_MESSAGES" / "messages.po", lang)
    assert _problems(template, catalog) == []


@pytest.mark.parametrize("lang", _strict(i18n.CONSOLE_LANGUAGES))
def test_every_message_of_the_console_is_translated(lang):
    template = _read(LOCALES / "console.pot")
    catalog = _read(LOCALES / lang / "LC_MESSAGES" / "console.po", lang)
    assert _problems(template, catalog) == []


def test_a_catalog_for_every_language_and_only_those():
    have = {p.parent.parent.name for p in LOCALES.glob("*/LC_MESSAGES/messages.po")}
    console = {p.parent.parent.name for p in LOCALES.glob("*/LC_MESSAGES/console.po")}
    assert have == set(i18n.LANGUAGES) and console == set(i18n.CONSOLE_LANGUAGES)


def test_the_check_finds_what_a_translator_can_get_wrong():
    template = Catalog()
    template.add("Hello %(name)s")
    template.add("Gone")
    template.add("Hello")
    catalog = Catalog(locale="de")
    catalog.add("Hello %(name)s", "Hallo %(nom)s")
    catalog.add("Hello", "Hallo", flags=["fuzzy"])
    assert sorted(_problems(template, catalog)) == [
        "fuzzy: 'Hello'",
        "missing: 'Gone'",
        "placeholders differ: 'Hello %(name)s' -> 'Hallo %(nom)s'",
    ]


@pytest.mark.parametrize(("config", "pot", "keywords"), [
    ("babel.cfg", "messages.pot", ["-k", "lazy_gettext", "-k", "lazy_ngettext:1,2", "-k", "pgettext_lazy:1c,2", "-k", "Problem"]),
    ("babel-console.cfg", "console.pot", ["-k", "lazy_gettext"]),
])
def test_the_templates_hold_every_message_the_sources_ask_for(tmp_path, config, pot, keywords):
    """``pybabel extract`` run now finds the same messages as the committed template: a new or
    changed message was extracted and the catalogs updated (README: Languages)."""
    out = tmp_path / pot
    subprocess.run(
        [sys.executable, "-m", "babel.messages.frontend", "extract", "-F", config, *keywords, "-o", str(out), "."],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    fresh = {(m.id, m.context) for m in _read(out) if m.id}
    committed = {(m.id, m.context) for m in _read(LOCALES / pot) if m.id}
    assert fresh - committed == set(), "extract the messages again (README: Languages)"
    assert committed - fresh == set(), "extract the messages again (README: Languages)"


def test_catalogs_load_from_the_po_files_without_a_compile_step():
    de = i18n.translations("de")
    assert isinstance(de, i18n.Translations)
    assert not list(LOCALES.glob("*/LC_MESSAGES/*.mo")), "compiled catalogs are not kept in the package"
