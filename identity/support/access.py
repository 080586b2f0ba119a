"""Which console pages each staff role may open: one table, checked by the console's middleware
before any handler runs (handlers then check the finer rules: a supervisor's own pages, a
service owner's own services).

- *agent*, *supervisor*: the people's side (search, profiles, actions; a supervisor also the
  audit trail, agents and second-factor removals). Never a service's pages.
- *admin*: every service's settings and sync health, dead letters, resyncs, and staff. Never
  people search or profiles.
- *service_owner*: their own services' sync health and deliveries (``/services``). Never people
  search, profiles, or another service."""

from __future__ import annotations

PEOPLE = frozenset({"agent", "supervisor"})
SERVICES = frozenset({"admin", "service_owner"})
ADMIN = frozenset({"admin"})

#: Path prefixes (relative to ``/support``) and the roles that may open them; the first match
#: decides, and a path matching none is refused.
AREAS: tuple[tuple[str, frozenset[str]], ...] = (
    ("/admin", ADMIN),
    ("/services", SERVICES),
    ("/people", PEOPLE),
    ("/agents", PEOPLE),
    ("/audit", PEOPLE),
    ("/second-factor-removals", PEOPLE),
)

#: Where each role starts (``/support/`` is the search page: people's side only).
HOMES = {"admin": "/support/services", "service_owner": "/support/services"}


def allowed(role: str, relative: str) -> bool:
    """Whether ``role`` may open the console path ``relative`` (e.g. ``/services/abc``)."""
    if relative == "/":
        return role in PEOPLE
    for prefix, roles in AREAS:
        if relative == prefix or relative.startswith(prefix + "/"):
            return role in roles
    return False


def home(role: str) -> str:
    return HOMES.get(role, "/support/")
