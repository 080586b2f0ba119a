"""What an attempt's outcome means, for profile deliveries and notices alike: pure functions of
the outcome, the row's attempts and failing clock, the time and the settings; no database, no I/O.

For the row (:func:`decide`):

- ``ok``: **settle** (the row is delivered).
- ``rejected`` (a Shared Signals receiver's ``400`` naming its ``err``, RFC 8935 section 2.3:
  the receiver will never take that SET): **dead** at once, not retried.
- ``gone`` (a ``410``): **gone**; the row waits, due, until the webhook is enabled again, and
  the endpoint is disabled.
- anything else, once the row has failed for ``sync_give_up_after``: **dead**.
- else **retry** after the next step of ``sync_retry_schedule`` (its last step repeats), never
  sooner than a ``Retry-After`` asked.

For the endpoint (a webhook, a SCIM server, or a Shared Signals stream's push endpoint; a topic
has no endpoint state): a settled row marks it healthy
(**recover**: out of failing and quarantine, its backlog due at once), a 410 **disables** it, a
retry recorded marks it **failing** from then on. A webhook failing for ``sync_quarantine_after``
(or a SCIM server failing as long) is quarantined (:func:`quarantine_probe`): tried one row at a time, every
``sync_quarantine_probe`` seconds, until one succeeds. A row given up leaves the endpoint as it
was: it failed for ``sync_give_up_after``, much longer than the quarantine wait, so its earlier
retries already marked the endpoint failing.

Both kinds count toward the endpoint's state: a failing webhook is the same webhook whatever is
sent to it, so a notice's failures mark it failing and quarantine it as a delivery's do, and a
notice it accepts brings it out of quarantine."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from identity.settings import Settings
from sync.webhooks import Outcome

SETTLE: Literal["settle"] = "settle"
RETRY: Literal["retry"] = "retry"
DEAD: Literal["dead"] = "dead"
GONE: Literal["gone"] = "gone"

#: Channels whose endpoint has a health (failing, quarantined): a webhook, a SCIM server and a
#: Shared Signals push stream's endpoint (a topic has none; polled SETs are never sent). A SCIM
#: server never answers "gone" (sync.scim), so only the others are disabled.
ENDPOINT_CHANNELS = ("webhook", "ssf", "scim")

#: The longest error text kept on a row or a service.
ERROR_LENGTH = 500


@dataclass(frozen=True)
class Decision:
    """What to record of one attempt: the row's ``action``, its ``attempts`` (this one counted),
    when it started failing and when it is next due (``next_attempt_at``; ``now`` unless
    retried), the error to keep, and the ``endpoint`` effect if it went to a webhook."""

    action: Literal["settle", "retry", "dead", "gone"]
    attempts: int
    failing_since: dt.datetime | None
    next_attempt_at: dt.datetime
    error: str | None
    endpoint: Literal["recover", "failing", "disable"] | None


def decide(
    outcome: Outcome, *, attempts: int, failing_since: dt.datetime | None, now: dt.datetime, channel: str, settings: Settings
) -> Decision:
    """The decision for an attempt that came to ``outcome`` at ``now``, on a row that had been
    tried ``attempts`` times before and has failed since ``failing_since`` (``None``: it had not)."""
    # Endpoints with a health of their own: a webhook, a SCIM server, a Shared Signals push stream.
    webhook = channel in ENDPOINT_CHANNELS
    if outcome.result == "ok":
        return Decision(SETTLE, attempts + 1, None, now, None, "recover" if webhook else None)
    error = (outcome.error or "failed")[:ERROR_LENGTH]
    if outcome.result == "rejected":
        return Decision(DEAD, attempts + 1, failing_since or now, now, error, None)
    if outcome.result == "gone":
        # Not an attempt that failed: the service said to stop. The row keeps its count.
        return Decision(GONE, attempts, failing_since, now, error, "disable" if webhook else None)
    since = failing_since or now
    if (now - since).total_seconds() >= settings.sync_give_up_after:
        return Decision(DEAD, attempts + 1, since, now, error, None)
    return Decision(RETRY, attempts + 1, since, now + dt.timedelta(seconds=retry_delay(attempts + 1, outcome.retry_after, settings)), error, "failing" if webhook else None)


def retry_delay(attempts: int, retry_after: float | None, settings: Settings) -> float:
    """Seconds before the next try of a row that failed ``attempts`` times: the schedule's step
    (its last one repeats), or longer if the answer asked for it (``Retry-After``)."""
    schedule = settings.sync_retry_schedule
    delay = schedule[min(attempts - 1, len(schedule) - 1)]
    return delay if retry_after is None else max(delay, retry_after)


def quarantine_probe(endpoint_failing_since: dt.datetime | None, now: dt.datetime, settings: Settings) -> dt.datetime | None:
    """When a webhook that has failed since ``endpoint_failing_since`` (and failed again at
    ``now``) is next tried, if it is quarantined: nothing more goes to it before then. ``None``
    while it has failed for less than ``sync_quarantine_after``."""
    if endpoint_failing_since is None:
        return None
    if endpoint_failing_since.tzinfo is None:  # SQLite hands back naive UTC
        endpoint_failing_since = endpoint_failing_since.replace(tzinfo=dt.UTC)
    if (now - endpoint_failing_since).total_seconds() < settings.sync_quarantine_after:
        return None
    return now + dt.timedelta(seconds=settings.sync_quarantine_probe)
