"""The node's Prometheus metrics, one registry per node (no process globals).

Owns every metric name the node exports at ``GET /metrics``. Invariants: labels are city names,
error codes and delivery states — never a case id, a message id, a name or any personal field, so
the metrics page can be handed to anyone who runs the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Send-to-receipt latency buckets (seconds): from loopback to a long outage.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


@dataclass(frozen=True)
class NodeMetrics:
    """Every metric of one node, bound to its own registry.

    Attributes:
        registry: the registry ``GET /metrics`` renders.
        queue_depth: undelivered outbox messages per peer and state.
        delivery_latency: seconds from queueing to the peer's receipt, per peer.
        retries: batches sent again after a failure, per peer.
        refusals: envelopes or requests refused, per peer and error code.
        received: envelopes accepted into the inbox, per peer.
        overdue: outbox messages older than the alert age, per peer.
        peer_up: 1 when the last exchange with the peer succeeded, else 0.
        equivocations: equivocation proofs held against a city (``node.checkpoints``); any
            value above 0 is an alarm.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    queue_depth: Gauge = field(init=False)
    delivery_latency: Histogram = field(init=False)
    retries: Counter = field(init=False)
    refusals: Counter = field(init=False)
    received: Counter = field(init=False)
    overdue: Gauge = field(init=False)
    peer_up: Gauge = field(init=False)
    equivocations: Gauge = field(init=False)

    def __post_init__(self) -> None:
        reg = self.registry
        values = {
            "queue_depth": Gauge(
                "citynode_outbox_queue_depth",
                "Undelivered outbox messages",
                ["peer", "state"],
                registry=reg,
            ),
            "delivery_latency": Histogram(
                "citynode_delivery_latency_seconds",
                "Seconds from queueing a message to storing the peer's receipt",
                ["peer"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            "retries": Counter(
                "citynode_delivery_retries",
                "Batches sent again after a failure",
                ["peer"],
                registry=reg,
            ),
            "refusals": Counter(
                "citynode_refusals", "Envelopes or requests refused", ["peer", "code"], registry=reg
            ),
            "received": Counter(
                "citynode_inbox_accepted",
                "Envelopes accepted into the inbox",
                ["peer"],
                registry=reg,
            ),
            "overdue": Gauge(
                "citynode_outbox_overdue",
                "Outbox messages older than the alert age",
                ["peer"],
                registry=reg,
            ),
            "peer_up": Gauge(
                "citynode_peer_up",
                "1 when the last exchange with the peer succeeded",
                ["peer"],
                registry=reg,
            ),
            "equivocations": Gauge(
                "citynode_keylog_equivocations",
                "Proofs held that a city signed two conflicting key-log checkpoints",
                ["city"],
                registry=reg,
            ),
        }
        for name, metric in values.items():
            object.__setattr__(self, name, metric)

    def render(self) -> bytes:
        """Return the Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
