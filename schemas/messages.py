"""Messages for the person who typed a value, ready to be translated where they are shown.

A validator raises :class:`Problem` with an English message template and its named values; its
``str()`` is the English message (the API's ``detail``). The hub's pages translate the same
template through their message catalog (``identity.i18n``) before filling it in, so the words
are the person's language while the values stay as typed. ``pybabel extract`` finds the
templates through the ``Problem`` and ``N_`` keywords."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["N_", "Problem", "Translate", "english"]

#: How a template and its values become the words shown: ``english`` here, the person's
#: language in the hub's pages.
Translate = Callable[[str, Mapping[str, Any]], str]


def N_(message: str) -> str:
    """Mark ``message`` for translation where it is shown (gettext's no-op marker)."""
    return message


def english(template: str, params: Mapping[str, Any]) -> str:
    return template % params if params else template


class Problem(ValueError):
    """A value refused, with the template of its message and the values that fill it in."""

    def __init__(self, template: str, **params: Any) -> None:
        super().__init__(english(template, params))
        self.template = template
        self.params = params

    def words(self, translate: Translate = english) -> str:
        return translate(self.template, self.params)
