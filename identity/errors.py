"""Errors any layer may raise about a request; the error middleware turns them into answers."""


class BadInput(Exception):
    """Text no person or client should send (a NUL, say): answered with 400."""


def storable(text: str) -> bool:
    """Whether the database can store (and so compare) ``text``: no NUL, which PostgreSQL text
    refuses, and nothing UTF-8 cannot encode (a lone surrogate). Text that is not cannot match
    any stored value, so lookups answer "not found" without asking the database."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
