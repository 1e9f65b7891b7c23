"""The server's Prometheus metrics: every definition, and the few helpers that label them.

Metrics are module-level (the ``prometheus_client`` convention) in the
default registry, which also carries the process metrics (CPU, memory, open
files) and Python's GC counts. Code that counts imports this module and
increments at a clear point; nothing else here knows about HTTP or storage.

Cost: the delivery path counts once per fan-out call (adding the number of
sockets) and once per log entry, never once per frame, and histograms are observed once per request,
per commit batch, or per message — at 100k frames/s a per-frame increment
would show in the profile. Labels are bounded: routes are the route table's
templates, reasons and stores are fixed words, statuses are HTTP codes.

docs/operations.md lists them with the PromQL an operator watches.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "render"]

# Seconds: from a fraction of a millisecond (a commit on a warm MySQL) to 10 s (an outage's timeouts).
LATENCY_BUCKETS_SECS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Sockets and users, read from the live registries when Prometheus scrapes.
OPEN_SOCKETS = Gauge("chat_open_sockets", "WebSocket connections open now")
CONNECTED_USERS = Gauge("chat_connected_users", "Users with at least one open WebSocket now")
HANDSHAKES_IN_PROGRESS = Gauge(
    "chat_handshakes_in_progress", "WebSocket handshakes admitted and not yet answered (bounded by CHAT_MAX_HANDSHAKES)"
)

HANDSHAKES = Counter(
    "chat_handshakes_total", "WebSocket handshakes by outcome: accepted, or the reason they were refused",
    ["outcome"],
)
SLOW_SOCKETS_CLOSED = Counter(
    "chat_slow_sockets_closed_total", "Sockets closed with 1013 because their outgoing queue overflowed"
)

HTTP_REQUESTS = Counter("chat_http_requests_total", "HTTP requests answered", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "chat_http_request_duration_seconds", "Time from a request's arrival to its answer", ["route"],
    buckets=LATENCY_BUCKETS_SECS,
)
RATE_LIMITED = Counter("chat_rate_limited_total", "Requests refused with 429 (send rate limit)")

MESSAGES_COMMITTED = Counter("chat_messages_committed_total", "Messages committed to the database")
COMMIT_LATENCY = Histogram(
    "chat_commit_duration_seconds", "Time one batch of messages takes to commit", buckets=LATENCY_BUCKETS_SECS
)
COMMIT_BATCH_SIZE = Histogram(
    "chat_commit_batch_size", "Messages committed together in one transaction (group commit)",
    buckets=BATCH_SIZE_BUCKETS,
)
DELIVERY_LATENCY = Histogram(
    "chat_send_to_delivery_seconds",
    "Time from a message's submission to its event being handed to every receiving socket",
    buckets=LATENCY_BUCKETS_SECS,
)
EVENTS_DELIVERED = Counter("chat_events_delivered_total", "Event frames handed to sockets")

# The event log as this process applies it: every process reads (and, from
# Redis, decodes) every entry, whatever its audience here. Read against
# delivered is what that costs (issue 20). Labelled by the entry's kind
# (storage/entries.py): the kinds delivered to sockets by name, the rest
# (socket subscriptions, process starts and stops, closed sockets, resyncs) as "other".
LOG_ENTRIES_READ = Counter(
    "chat_log_entries_read_total", "Event log entries this process read and applied, by kind", ["kind"]
)
LOG_ENTRIES_DELIVERED = Counter(
    "chat_log_entries_delivered_total", "Event log entries that reached at least one socket of this process, by kind",
    ["kind"],
)
# The labelled children are made once: applying an entry costs a dict lookup and an increment, not a labels() call.
_LOG_ENTRY_COUNTERS = {
    kind: (LOG_ENTRIES_READ.labels(kind), LOG_ENTRIES_DELIVERED.labels(kind))
    for kind in ("conversation", "global", "all", "viewers", "other")
}
_OTHER_LOG_ENTRY = _LOG_ENTRY_COUNTERS["other"]

STORAGE_ERRORS = Counter(
    "chat_storage_errors_total", "Errors from the database or the cache (failed requests, refreshes, probes)",
    ["store"],
)

# Modules whose exceptions come from each store (the drivers below SQLAlchemy too).
_STORE_OF_MODULE = (("redis", "cache"), ("sqlalchemy", "database"), ("aiomysql", "database"),
                    ("pymysql", "database"), ("aiosqlite", "database"), ("sqlite3", "database"))


def store_of(error: BaseException) -> str | None:
    """``database`` or ``cache`` if the error came from that store, else None."""
    module = type(error).__module__
    for prefix, store in _STORE_OF_MODULE:
        if module == prefix or module.startswith(prefix + "."):
            return store
    return None


def count_storage_error(error: BaseException) -> None:
    """Count an error if it came from the database or the cache."""
    store = store_of(error)
    if store is not None:
        STORAGE_ERRORS.labels(store).inc()


def reason_of(error_type: type) -> str:
    """A snake_case label from an error class name: ``NotAuthenticated`` → ``not_authenticated``."""
    name = error_type.__name__
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def log_entry_counters(kind: str) -> tuple[Counter, Counter]:
    """The (read, delivered) counters of a log entry of this kind."""
    return _LOG_ENTRY_COUNTERS.get(kind, _OTHER_LOG_ENTRY)


def watch_connections(
    sockets: Callable[[], float], users: Callable[[], float], handshakes: Callable[[], float]
) -> None:
    """Read the socket, user and handshake gauges from these functions at every scrape."""
    OPEN_SOCKETS.set_function(sockets)
    CONNECTED_USERS.set_function(users)
    HANDSHAKES_IN_PROGRESS.set_function(handshakes)


def render() -> bytes:
    """Every metric in the Prometheus text format."""
    return generate_latest(REGISTRY)
