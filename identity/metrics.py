"""The hub's own Prometheus metrics (the sync pipeline's are ``sync.metrics``): HTTP requests by
route template and status with their latency, sign-ins, second-factor checks, tokens issued by
grant type, and the database connection pool.

Cheap on the hot path: a request costs one dictionary look-up for its (route, method, status)
children, one counter increment and one histogram observation; the pool is sampled every few
seconds and when ``/metrics`` is read, never per request.

``serve --workers N`` runs N processes and only the first serves ``/metrics``: there the parent
gives every worker one ``PROMETHEUS_MULTIPROC_DIR`` (``prometheus_client``'s multiprocess mode),
each process writes its figures to its own files, and the first one reports their sum
(:meth:`HubMetrics.exposition`). A worker's counts outlive it (counters only rise); its pool
gauges go when it exits (``livesum``, and the parent marks it dead)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: Request latency buckets, in seconds: a token answer takes a millisecond or two, a password
#: sign-in a few hundred (argon2id), a stalled body up to its timeout.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: ``route`` of a request that matched no route (a 404 from the router): never its raw path.
UNMATCHED = "unmatched"

SIGN_IN_RESULTS = ("succeeded", "failed", "throttled")
SECOND_FACTOR_RESULTS = ("asked", "passed", "failed", "throttled")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: Methods counted by name; any other is ``other`` (a client may send any token as a method:
#: each would be a new series).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HubMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "onesignin_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "onesignin_http_request_duration_seconds", "Time to answer an HTTP request, by route template and method.",
            ["route", "method"], buckets=HTTP_BUCKETS, registry=r,
        )
        self.sign_ins = Counter(
            "onesignin_sign_ins",
            "Password sign-ins: succeeded (a session started, after the second factor where one is due), failed "
            "(wrong address or password), throttled (refused unchecked while a wait runs).",
            ["result"], registry=r,
        )
        self.second_factor = Counter(
            "onesignin_second_factor",
            "Second-factor codes: asked (the password was right), passed, failed (a wrong code), throttled.",
            ["result"], registry=r,
        )
        self.tokens = Counter("onesignin_tokens_issued", "Token responses issued, by grant type.", ["grant_type"], registry=r)
        self.pool_checked_out = Gauge(
            "onesignin_db_pool_checked_out", "Database connections in use.", registry=r, multiprocess_mode="livesum"
        )
        self.pool_size = Gauge(
            "onesignin_db_pool_size", "Database connections the pool keeps (ONESIGNIN_DATABASE_POOL_SIZE).",
            registry=r, multiprocess_mode="livesum",
        )
        self.pool_overflow = Gauge(
            "onesignin_db_pool_overflow",
            "Connections opened beyond the pool's size (positive: requests are waiting for or beyond the pool).",
            registry=r, multiprocess_mode="livesum",
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # Every series of the fixed label sets exists from the start: zeros, not gaps.
        for result in SIGN_IN_RESULTS:
            self.sign_ins.labels(result)
        for result in SECOND_FACTOR_RESULTS:
            self.second_factor.labels(result)
        self._grants = {grant: self.tokens.labels(grant) for grant in GRANT_TYPES}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered (the access log's figures)."""
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.http_requests.labels(route, method, str(status)), self.http_duration.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

    def token_issued(self, grant_type: str | None) -> None:
        child = self._grants.get(grant_type or "")
        if child is not None:
            child.inc()

    def sample_pool(self, pool: Any) -> None:
        """The pool's figures now (SQLAlchemy's ``QueuePool``; others report what they have)."""
        for gauge, read in ((self.pool_checked_out, "checkedout"), (self.pool_size, "size"), (self.pool_overflow, "overflow")):
            figure = getattr(pool, read, None)
            if callable(figure):
                gauge.set(max(0, figure()) if read == "overflow" else figure())

    def names(self) -> frozenset[str]:
        return frozenset(m._name for m in (  # noqa: SLF001 (the family names the registry reports)
            self.http_requests, self.http_duration, self.sign_ins, self.second_factor, self.tokens,
            self.pool_checked_out, self.pool_size, self.pool_overflow,
        ))

    def exposition(self) -> bytes:
        """This process's figures, or with ``PROMETHEUS_MULTIPROC_DIR`` set, every worker's summed."""
        path = os.environ.get(MULTIPROC_DIR)
        if not path:
            return generate_latest(self.registry)
        summed = CollectorRegistry()
        summed.register(_Only(self.names(), path))
        return generate_latest(summed)


class _Only(Collector):
    """The hub's families of the multiprocess files (the sync pipeline's are reported by its own
    registry, from the one process that runs it)."""

    def __init__(self, names: frozenset[str], path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.names = names
        self.inner = MultiProcessCollector(None, path)

    def collect(self) -> Iterable[Metric]:
        return [m for m in self.inner.collect() if m.name in self.names]
