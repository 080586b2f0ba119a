"""The wait between tries of a background loop that failed: doubled at each failure up to a
ceiling, back to the start after a success. One helper for every loop of the sync pipeline (the
outbox relay, the fan-out's consumer, the deliveries' and the notices' claims).

Those loops never give up (they run as long as the process does) and count no attempts, so a
retry library built around a call retried a bounded number of times (``stamina``, ``tenacity``)
would be bent to fit; this is the whole rule."""

from __future__ import annotations


class Backoff:
    """``delay`` is what the next failure waits; ``failed()`` returns it and doubles it (up to
    ``ceiling``), ``succeeded()`` starts again from ``initial``."""

    def __init__(self, initial: float = 0.5, ceiling: float = 30.0) -> None:
        if not 0 < initial <= ceiling:
            raise ValueError("0 < initial <= ceiling")
        self.initial = initial
        self.ceiling = ceiling
        self.delay = initial

    def failed(self) -> float:
        """The wait after this failure (the next one waits twice as long, up to the ceiling)."""
        delay = self.delay
        self.delay = min(delay * 2, self.ceiling)
        return delay

    def succeeded(self) -> None:
        self.delay = self.initial
