"""Every word a template shows people goes through a translation call: the template's text
outside ``{% trans %}`` blocks is markup, whitespace and punctuation only.

Read with Jinja's own lexer (not regular expressions over the file): the ``data`` tokens
outside ``trans`` blocks are the text shown as written. Attribute values meant for people
(``aria-label``, ``placeholder``, ``title``, ``alt``, ``data-label``) count as text too."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib.resources import files

import jinja2
import pytest

from identity import i18n
from identity.pages import environment

PEOPLE = files("identity.pages") / "templates"
CONSOLE = files("identity.support") / "templates"
TEMPLATES = [(PEOPLE, p.name) for p in PEOPLE.iterdir() if p.name.endswith(".html")] + [
    (CONSOLE, p.name) for p in CONSOLE.iterdir() if p.name.endswith(".html")
]
#: Attributes whose values people read or hear.
READ_ATTRIBUTES = {"aria-label", "placeholder", "title", "alt", "data-label"}
#: Placeholders that are examples of a format, the same in every language.
EXAMPLES = {"+447700900123", "en-GB", "Europe/London"}
#: The product's name is not translated.
NAMES = ("One Sign In",)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_data(self, data: str) -> None:
        self.found.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.extend(v for k, v in attrs if k in READ_ATTRIBUTES and v and v not in EXAMPLES)


def untranslated(source: str) -> list[str]:
    """The words of ``source`` a person would see that no translation call covers."""
    env = jinja2.Environment(extensions=["jinja2.ext.i18n"])
    outside: list[str] = []
    depth = 0
    tokens = list(env.lex(source))
    for i, (_line, kind, value) in enumerate(tokens):
        if kind == "name" and value in ("trans", "endtrans") and tokens[i - 1][1] in ("block_begin", "whitespace"):
            depth += 1 if value == "trans" else -1
        elif kind == "data" and depth == 0:
            outside.append(value)
        elif kind == "variable_begin" and depth == 0:
            outside.append("\x00")  # a value: not text, but it splits the text around it
    parser = _Text()
    parser.feed("".join(outside))
    words = []
    for text in parser.found:
        for name in NAMES:
            text = text.replace(name, "")
        for piece in text.split("\x00"):
            if re.search(r"[^\W\d_]{2,}", piece):
                words.append(piece.strip())
    return words


@pytest.mark.parametrize(("folder", "name"), TEMPLATES, ids=[n for _, n in TEMPLATES])
def test_no_words_outside_translation_calls(folder, name):
    assert untranslated((folder / name).read_text("utf-8")) == []


def test_the_check_finds_words_outside_trans():
    assert untranslated("<p>{% trans %}Fine{% endtrans %} Not fine</p>") == ["Not fine"]
    assert untranslated('<nav aria-label="Sections">{{ _("x") }}</nav>') == ["Sections"]
    assert untranslated("<p>{{ name }} · {% if x %}{{ y }}{% endif %}</p>") == []


def test_every_template_compiles_with_the_i18n_extension():
    env = environment()
    for name in env.list_templates():
        env.get_template(name)
    assert i18n.LANGUAGES[0] == i18n.DEFAULT
