"""Free text people type (names, address parts, rights-request details) checked before it is
stored, shown to support agents or sent to services.

The rule is PRECIS FreeformClass (RFC 8264 section 4.3, via ``precis-i18n``), the IETF's
class for free text such as display names. It refuses:

- control characters: C0 (NUL, tab, newline...), DEL and C1. Multi-line fields (a street
  address, a request's details) take line feeds between lines (``\\r\\n`` is read as one);
- invisible format characters that change how text looks without being seen (Unicode's
  Default_Ignorable_Code_Point): bidi embeddings, overrides and isolates (U+202A-U+202E,
  U+2066-U+2069), LRM/RLM, zero-width space, word joiner, soft hyphen, BOM, tag characters,
  invisible operators, variation selectors...;
- zero-width joiner and non-joiner, except where a script needs them (RFC 5892 appendix A:
  after a virama, as in Devanagari conjuncts, and ZWNJ between joining letters, as in Persian
  ``می‌خواهم``); elsewhere (``An<ZWJ>n``) they only disguise one name as another;
- unassigned and private-use code points, line and paragraph separators and other characters
  PRECIS leaves out.

Letters, marks, digits, punctuation, symbols, emoji and spaces of every script are accepted.
Accepted text is stored in Unicode normalization form C (composed), so a name looks and
compares the same whichever way it was typed."""

from __future__ import annotations

import unicodedata
from precis_i18n import get_profile
from pydantic import AfterValidator

from schemas.messages import Problem

__all__ = ["MULTILINE", "SINGLE_LINE", "check_multiline", "check_single_line"]

_FREEFORM = get_profile("FreeFormClass")

_INVISIBLE = {"precis_ignorable_properties", "zero_width_joiner", "zero_width_nonjoiner"}


#: Names of the control characters people most often paste by accident (controls have none in
#: the Unicode character database).
_CONTROL_NAMES = {0x00: "NULL", 0x09: "TAB", 0x0A: "LINE FEED", 0x0D: "CARRIAGE RETURN", 0x7F: "DELETE"}


def _describe(char: str) -> str:
    name = unicodedata.name(char, "") or _CONTROL_NAMES.get(ord(char), "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def _problem(text: str, start: int, reason: str, *, multiline: bool) -> Problem:
    char, position = _describe(text[start]), start + 1
    kind = reason.removeprefix("DISALLOWED/")
    if kind == "controls" and multiline:
        return Problem(
            # Translators: %(char)s names a character, e.g. "U+0009 (TAB)"; %(position)s counts characters from 1.
            "Remove the control character %(char)s at character %(position)s: the text may have several lines, "
            "but no other control characters.",
            char=char,
            position=position,
        )
    if kind == "controls":
        return Problem("Remove the control character %(char)s at character %(position)s.", char=char, position=position)
    if kind in _INVISIBLE:
        return Problem(
            "Remove the invisible character %(char)s at character %(position)s: "
            "invisible formatting characters can disguise what the text says.",
            char=char,
            position=position,
        )
    return Problem("The character %(char)s at character %(position)s cannot be used here.", char=char, position=position)


def _check(text: str, *, multiline: bool) -> str:
    if text.isascii() and text.isprintable():
        return text  # the common case: nothing to refuse, nothing to normalize
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n") if multiline else text)
    offset = 0
    for line in text.split("\n") if multiline else (text,):
        try:
            _FREEFORM.enforce(line)
        except UnicodeEncodeError as exc:
            raise _problem(text, offset + exc.start, exc.reason, multiline=multiline) from None
        offset += len(line) + 1
    return text


def check_single_line(text: str) -> str:
    """``text`` if it is acceptable free text on one line (in NFC); else ValueError with a
    message for the person who typed it."""
    return _check(text, multiline=False)


def check_multiline(text: str) -> str:
    """Like :func:`check_single_line`, with line feeds allowed between lines (``\\r\\n`` and
    ``\\n`` both become ``\\n``)."""
    return _check(text, multiline=True)


#: For pydantic fields, after their length constraints: ``Annotated[str, StringConstraints(...),
#: SINGLE_LINE]``.
SINGLE_LINE = AfterValidator(check_single_line)
MULTILINE = AfterValidator(check_multiline)
