"""Data-subject rights requests, routed to the controller of the data: the hub itself or one
service the person linked. See :mod:`.lifecycle` for the states, :mod:`.deadlines` for when an
answer is due, :mod:`.errors` for refusals, and :mod:`.store` for the data functions."""

from identity.rights.deadlines import add_months, due_at, extended_due_at
from identity.rights.errors import (
    ExtensionTooLate,
    InvalidTransition,
    NotFound,
    ReasonRequired,
    RightsError,
    UnknownTarget,
)
from identity.rights.lifecycle import CLOSED, NEEDS_REASON, NEXT, OPEN
from identity.rights.store import (
    RequestView,
    State,
    any_one,
    for_account,
    for_hub_one,
    for_operators,
    for_service,
    for_service_one,
    is_overdue,
    move,
    open_for_support,
    open_request,
    overdue_by_target,
    view,
    view_for_account,
)

__all__ = [
    "CLOSED",
    "NEEDS_REASON",
    "NEXT",
    "OPEN",
    "ExtensionTooLate",
    "InvalidTransition",
    "NotFound",
    "ReasonRequired",
    "RequestView",
    "RightsError",
    "State",
    "UnknownTarget",
    "add_months",
    "any_one",
    "due_at",
    "extended_due_at",
    "for_account",
    "for_hub_one",
    "for_operators",
    "for_service",
    "for_service_one",
    "is_overdue",
    "move",
    "open_for_support",
    "open_request",
    "overdue_by_target",
    "view",
    "view_for_account",
]
