"""Why a rights-request action was refused. Each error has a ``public`` message, safe to show
to whoever asked, and a private ``detail`` for the log::

    RightsError
    ├── UnknownTarget       the service is unknown, or the person never linked it (the same)
    ├── NotFound            no such request, or not one this caller may see (the same)
    ├── InvalidTransition   the request cannot move to that status from where it is
    │   └── ExtensionTooLate  an extension asked for once the request is already overdue
    └── ReasonRequired      extending or refusing needs a reason
"""

from __future__ import annotations


class RightsError(Exception):
    public = "The request cannot be handled."

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.public)
        self.detail = detail


class UnknownTarget(RightsError):
    public = "No linked service has that client_id."


class NotFound(RightsError):
    public = "No rights request with that id."


class InvalidTransition(RightsError):
    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"{current} -> {target}")
        self.current = current
        self.target = target

    @property
    def public(self) -> str:  # type: ignore[override]
        if self.current in ("completed", "refused"):
            return f"The request is already {self.current}; it cannot change any more."
        if self.current == "extended" and self.target == "extended":
            return "The request is already extended; it can be extended only once."
        if self.current == self.target:
            return f"The request is already {self.current}."
        return f"A request that is {self.current} cannot become {self.target}."


class ExtensionTooLate(InvalidTransition):
    """GDPR Art. 12(3): the controller extends within the first month, not after missing it."""

    @property
    def public(self) -> str:  # type: ignore[override]
        return "The request is already past its due date; an extension must be decided before then, not after."


class ReasonRequired(RightsError):
    public = "Give a reason: extending or refusing a request needs one, and the person is shown it."
