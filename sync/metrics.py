"""Prometheus metrics of the sync pipeline. Each process has its own registry; counters and
histograms are updated where the work happens, gauges read from the database periodically
(the database, shared by every process, is where backlog and lag are true)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400)


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.relay_published = Counter("onesignin_outbox_published", "Outbox events published to Kafka.", registry=r)
        self.relay_republished = Counter(
            "onesignin_outbox_republished",
            "Events published again because a memory-only broker never had them consumed.",
            registry=r,
        )
        self.relay_errors = Counter("onesignin_outbox_relay_errors", "Failed relay rounds (Kafka or database unavailable).", registry=r)
        self.relay_latency = Histogram(
            "onesignin_outbox_publish_latency_seconds", "From the change's commit to its event acknowledged by Kafka.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.kafka_topic_layout_errors = Counter(
            "onesignin_kafka_topic_layout_errors",
            "Checks that found one of the hub's topics with another partition count than configured, on a cluster the hub "
            "does not change: nothing is published to it until it is fixed (the log gives the kafka-topics command).",
            registry=r,
        )
        self.kafka_topics_recreated = Counter(
            "onesignin_kafka_topics_recreated",
            "Topics created again with their configured partition count on the memory-only embedded broker.",
            registry=r,
        )
        self.kafka_broker_changes = Counter(
            "onesignin_kafka_broker_changes",
            "Times the broker turned out to be another one (a new cluster id): the embedded broker restarted empty.",
            registry=r,
        )
        self.embedded_broker_restarts = Counter(
            "onesignin_embedded_broker_restarts", "Times the embedded broker exited on its own and was started again.", registry=r
        )
        self.outbox_lag = Gauge("onesignin_outbox_lag_seconds", "Age of the oldest unpublished outbox event (0 when none).", registry=r)
        self.outbox_pending = Gauge("onesignin_outbox_pending", "Unpublished outbox events.", registry=r)
        self.events_consumed = Counter("onesignin_sync_events_consumed", "Hub events consumed by the sync worker.", ["type"], registry=r)
        self.deliveries = Counter(
            "onesignin_sync_deliveries", "Delivery attempts by channel and result.", ["channel", "result"], registry=r
        )
        self.delivery_latency = Histogram(
            "onesignin_sync_delivery_latency_seconds",
            "From the change's commit to the service acknowledging it.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.notices = Counter(
            "onesignin_sync_notices", "Notice delivery attempts (unlinks, rights requests, restrictions) by channel and result.",
            ["channel", "result"], registry=r,
        )
        self.partitions_assigned = Gauge(
            "onesignin_sync_partitions_assigned",
            "Partitions of the hub's event topic this worker consumes (0 while its group rebalances).",
            registry=r,
        )
        self.backlog = Gauge("onesignin_sync_backlog", "Deliveries waiting (due or scheduled for retry).", registry=r)
        self.dead_letters = Gauge("onesignin_sync_dead_letters", "Deliveries that gave up and were not redelivered.", registry=r)
        self.quarantined = Gauge("onesignin_sync_quarantined_endpoints", "Webhook and SCIM endpoints in quarantine.", registry=r)
        self.disabled = Gauge("onesignin_sync_disabled_endpoints", "Webhook endpoints disabled (410 Gone).", registry=r)
        self.rights_overdue = Gauge(
            "onesignin_rights_requests_overdue",
            "Open rights requests past their due date, by target: hub (the hub's own) or a service's client_id.",
            ["target"], registry=r,
        )
        # Every series exists from the start, so dashboards and alerts see zeros, not gaps.
        for channel in ("webhook", "topic", "scim"):
            self.delivery_latency.labels(channel)
            for result in ("ok", "retry", "gone"):
                self.deliveries.labels(channel, result)
                self.notices.labels(channel, result)
        for kind in ("profile.changed", "link.created"):
            self.events_consumed.labels(kind)
        self.rights_overdue.labels("hub")
