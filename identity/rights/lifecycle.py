"""The states of a rights request and the steps between them.

``received`` -> ``acknowledged`` | ``extended`` | ``completed`` | ``refused``;
``acknowledged`` -> ``extended`` | ``completed`` | ``refused``;
``extended`` -> ``completed`` | ``refused``. ``completed`` and ``refused`` close the request.
An extension (at most one, since nothing leads back out of ``extended``) and a refusal need a
reason, which the person is shown."""

from __future__ import annotations

from typing import Literal

Status = Literal["received", "acknowledged", "extended", "completed", "refused"]
#: What a controller may move a request to.
Step = Literal["acknowledged", "extended", "completed", "refused"]

OPEN: frozenset[str] = frozenset({"received", "acknowledged", "extended"})
CLOSED: frozenset[str] = frozenset({"completed", "refused"})
NEXT: dict[str, frozenset[str]] = {
    "received": frozenset({"acknowledged", "extended", "completed", "refused"}),
    "acknowledged": frozenset({"extended", "completed", "refused"}),
    "extended": frozenset({"completed", "refused"}),
    "completed": frozenset(),
    "refused": frozenset(),
}
NEEDS_REASON: frozenset[str] = frozenset({"extended", "refused"})


def allowed(current: str, target: str) -> bool:
    return target in NEXT.get(current, frozenset())
