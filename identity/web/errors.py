"""Errors any layer may raise about a request; the error middleware turns them into answers."""


class BadInput(Exception):
    """Text no person or client should send (a NUL, say): answered with 400."""
