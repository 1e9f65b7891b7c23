"""The Tornado application: routes, services, start-up and shutdown.

:class:`ChatServer` owns everything with a lifetime (database engine, cache
client, registry, the periodic socket-cache refresh) so tests and ``run.py``
start and stop the same thing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import hashlib
import ipaddress
import logging
import time
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from handlers import conversations, dev, features, health, messages
from handlers import metrics as metrics_handlers
from handlers.apidoc import OpenApiHandler
from handlers.base import NotFoundHandler
from handlers.static import StaticHandler
from handlers.websocket import ChatSocketHandler
from server import apidoc, metrics
from server.auth import load_or_create_secret
from server.admission import AddressCounts, HandshakeAdmission
from server.chat import ChatService
from server.drain import Drain
from server.health import Readiness
from server.hub import Hub
from server.registry import Registry
from server.settings import Settings
from storage.bus import create_bus
from storage.cache import SOCKET_REFRESH_SECS, create_cache
from storage.database import Database

log = logging.getLogger("chat")
access_log = logging.getLogger("chat.access")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# Handlers stream bodies (handlers.base); this only bounds what Tornado buffers itself.
MAX_BUFFERED_BODY_BYTES = 1024 * 1024
# Tornado reads headers up to this; handlers.base refuses over 64 KiB with a
# JSON 431. Past this Tornado closes the connection before any handler runs.
MAX_READ_HEADER_BYTES = 256 * 1024
WS_MAX_MESSAGE_BYTES = 64 * 1024
WS_PING_INTERVAL_SECS = 25
WS_PING_TIMEOUT_SECS = 20  # tornado wants it no longer than the interval
# At shutdown, requests in flight get this long to finish before everything closes.
SHUTDOWN_DRAIN_SECS = 10
# ... and the listening socket stays open, answering 503, until nobody has knocked for this long.
SHUTDOWN_QUIET_SECS = 0.25


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Probes arrive every few seconds from every balancer; their successes are not news.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# Methods get their own label; anything else a client invents is "other" (bounded labels).
KNOWN_METHODS = frozenset({"GET", "POST", "DELETE", "OPTIONS", "HEAD", "PUT", "PATCH"})
UNMATCHED_ROUTE = "unmatched"


def route_template(pattern: str) -> str:
    """The route as docs name it: ``/v1/conversations/join/([^/]*)`` → ``/v1/conversations/join/{conversation_id}``."""
    return pattern.replace("([^/]*)", "{conversation_id}")


def record_request(route_names: dict[type, str], handler: tornado.web.RequestHandler) -> None:
    """After every answer: one log line (method, path — never the query: it carries
    signatures —, status, ms) and the request metrics, labelled by route template."""
    status = handler.get_status()
    method = handler.request.method or ""
    seconds = handler.request.request_time()
    route = route_names.get(type(handler), UNMATCHED_ROUTE)
    metrics.HTTP_REQUESTS.labels(route, method if method in KNOWN_METHODS else "other", str(status)).inc()
    metrics.HTTP_LATENCY.labels(route).observe(seconds)
    if status == 429:
        metrics.RATE_LIMITED.inc()
    if handler.request.path in PROBE_PATHS:
        level = logging.DEBUG if status < 400 else logging.WARNING  # the reason is logged by server.health
    else:
        level = logging.INFO if status < 500 else logging.ERROR
    access_log.log(level, "%s %s %d %.1fms", method, handler.request.path, status, 1000.0 * seconds)


class SettingsConflict(Exception):
    """This process's settings cannot work beside the processes already running."""


def _bind(setting: str, host: str, port: int) -> list:
    """Listening sockets on host:port; a port another process holds refuses the start in one line, naming the setting."""
    try:
        return tornado.netutil.bind_sockets(port, host)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise SettingsConflict(
            f"{host}:{port} is in use (another process on this host?): give each process its own {setting}"
        ) from None


class ChatServer:
    """The whole server: build with settings, ``await start()``, ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.dev_secret = not settings.vk_secret
        if self.dev_secret:
            Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
            settings = dataclasses.replace(settings, vk_secret=load_or_create_secret(settings.data_dir))
        self.settings = settings
        self.database = Database(settings.effective_database_url, settings.db_timeout)
        self.bus = create_bus(settings.redis_url, settings.redis_prefix, settings.resume_window, settings.redis_timeout)
        self.cache = create_cache(settings.redis_url, settings.redis_prefix, self.bus.process_id, settings.redis_timeout)
        self.registry = Registry()
        self.hub = Hub(self.bus, self.cache, self.database, self.registry, settings)
        self.chat = ChatService(settings, self.database, self.cache, self.registry, self.hub)
        self.readiness = Readiness(self.database, self.cache)
        self.drain = Drain()
        self.admission = HandshakeAdmission(settings.max_handshakes)
        self.addresses = AddressCounts(settings.max_sockets_per_address)
        self.http_server: tornado.httpserver.HTTPServer | None = None
        self.metrics_server: tornado.httpserver.HTTPServer | None = None
        self.metrics_port: int | None = None
        self._refresh: tornado.ioloop.PeriodicCallback | None = None
        self._stopped = False

    @property
    def dev_signin_enabled(self) -> bool:
        """Development sign-in exists only with a generated secret on a loopback address."""
        return self.dev_secret and is_loopback(self.settings.host)

    def make_app(self) -> tornado.web.Application:
        services = {"chat": self.chat, "settings": self.settings, "drain": self.drain}
        openapi: dict[str, Any] = {}
        routes: list[Any] = [
            (r"/v1/messages/get", messages.GetMessagesHandler, services),
            (r"/v1/messages/send", messages.SendMessageHandler, services),
            (r"/v1/conversations/get", conversations.ListConversationsHandler, services),
            (r"/v1/conversations/new", conversations.NewConversationHandler, services),
            (r"/v1/conversations/join/([^/]*)", conversations.JoinHandler, services),
            (r"/v1/conversations/leave/([^/]*)", conversations.LeaveHandler, services),
            (r"/v1/conversations/delete/([^/]*)", conversations.DeleteHandler, services),
            (r"/v1/conversations/read/([^/]*)", conversations.ReadHandler, services),
            (r"/v1/conversations/view/([^/]*)", conversations.ViewHandler, services),
            (r"/v1/conversations/stopView/([^/]*)", conversations.StopViewHandler, services),
            (r"/v1/conversations/info/([^/]*)", conversations.InfoHandler, services),
            (r"/v1/ws", ChatSocketHandler, {**services, "admission": self.admission, "addresses": self.addresses}),
            (r"/healthz", health.HealthHandler, services),
            (r"/readyz", health.ReadyHandler, {**services, "readiness": self.readiness}),
            (r"/v1/features", features.FeaturesHandler, {**services, "dev_signin": self.dev_signin_enabled}),
            # Filled in below, once the route table it describes is complete.
            (r"/v1/openapi.json", OpenApiHandler, {**services, "document": openapi}),
        ]
        if self.dev_signin_enabled:
            routes.append((r"/v1/dev/signin", dev.DevSigninHandler, services))
        if self.settings.metrics_token:
            routes.append((r"/metrics", metrics_handlers.TokenMetricsHandler, services))
        route_names = {handler: route_template(pattern) for pattern, handler, _ in routes}
        openapi.update(apidoc.openapi_document((name, handler) for handler, name in route_names.items()))
        if WEB_DIR.is_dir():
            routes.append(
                (r"/((?!v1/).*)", StaticHandler, {"path": str(WEB_DIR), "default_filename": "index.html"})
            )
            route_names[StaticHandler] = "static"
        return tornado.web.Application(
            routes,
            default_handler_class=NotFoundHandler,
            default_handler_args=services,
            log_function=functools.partial(record_request, route_names),
            websocket_ping_interval=WS_PING_INTERVAL_SECS,
            websocket_ping_timeout=WS_PING_TIMEOUT_SECS,
            websocket_max_message_size=WS_MAX_MESSAGE_BYTES,
            compress_response=False,
        )

    async def start(self, port: int | None = None) -> int:
        """Migrate, reset stale socket ids, listen; return the bound port.

        A start that fails part way (Redis too slow to answer, say) stops
        what it had started: no log reader or heartbeat outlives it.
        """
        try:
            return await self._start(port)
        except BaseException:
            await self.stop(drain_secs=0)
            raise

    async def _start(self, port: int | None) -> int:
        await self.database.migrate()
        await self._refuse_settings_that_cannot_be_shared()
        await self.hub.start()
        self.http_server = tornado.httpserver.HTTPServer(
            self.make_app(), max_buffer_size=MAX_BUFFERED_BODY_BYTES, max_header_size=MAX_READ_HEADER_BYTES,
            xheaders=False,
        )
        api_port = self.settings.port if port is None else port
        sockets = _bind("CHAT_HOST/CHAT_PORT", self.settings.host, api_port)
        self.http_server.add_sockets(sockets)
        metrics.watch_connections(
            lambda: self.registry.size()["sockets"], lambda: self.registry.size()["users"],
            lambda: self.admission.in_progress,
        )
        self._start_metrics_listener(api_port)
        self._refresh = tornado.ioloop.PeriodicCallback(self._refresh_socket_cache, SOCKET_REFRESH_SECS * 1000)
        self._refresh.start()
        return sockets[0].getsockname()[1]

    def _start_metrics_listener(self, api_port: int) -> None:
        """Serve /metrics on CHAT_METRICS_ADDR (a port of its own, loopback by default), if set."""
        address = self.settings.metrics_bind(api_port)
        if address is None:
            return
        app = tornado.web.Application(
            [(r"/metrics", metrics_handlers.MetricsHandler)], default_handler_class=NotFoundHandler,
            default_handler_args={"chat": self.chat, "settings": self.settings, "drain": self.drain}, log_function=lambda handler: None,
        )
        self.metrics_server = tornado.httpserver.HTTPServer(app)
        sockets = _bind("CHAT_METRICS_ADDR", address[0], address[1])
        self.metrics_server.add_sockets(sockets)
        self.metrics_port = sockets[0].getsockname()[1]

    async def _refuse_settings_that_cannot_be_shared(self) -> None:
        """Several processes form one chat only on one database, one Redis prefix and the same rules.

        Raise SettingsConflict where this process can tell they would not:
        a second process on a MySQL database without Redis (each would be a
        chat of its own, on one database), or a process whose shared
        settings differ from those of the processes already running.
        """
        settings = self.settings
        if not settings.redis_url:
            if not await self.database.claim_sole_process():
                raise SettingsConflict(
                    "another process serves this database without Redis: several processes need the same "
                    "CHAT_REDIS_URL and CHAT_REDIS_PREFIX (docs/deploy.md); one process alone needs no Redis"
                )
            return
        shared = {
            "database_url": hashlib.sha256(self.database.url.render_as_string(hide_password=False).encode()).hexdigest(),
            "vk_secret": hashlib.sha256(settings.vk_secret.encode()).hexdigest(),
            "max_members": str(settings.max_members),
            "send_rate_limit": str(settings.send_rate_limit),
            "resume_window": str(settings.resume_window),
            "auth_max_age": str(settings.auth_max_age),
        }
        differing = await self.bus.shared_settings_conflict(shared)
        if differing:
            raise SettingsConflict(
                f"settings differ from the running processes on this Redis prefix: {', '.join(differing)} "
                "(every process of one chat must share them: README, several processes)"
            )

    async def _refresh_socket_cache(self) -> None:
        try:
            await self.chat.refresh_socket_cache()
        except Exception as error:
            metrics.count_storage_error(error)
            log.exception("socket cache refresh failed")

    async def stop(self, drain_secs: float = SHUTDOWN_DRAIN_SECS) -> None:
        """Shut down without cutting a request: refuse new ones, let those in flight answer, then close.

        New requests and handshakes get 503 from now on; requests in flight
        (a send waiting for its commit) finish with the database still open,
        for at most ``drain_secs``. Only then the listening socket and the
        connections close, every WebSocket with 1001, and the storage.
        """
        if self._stopped:
            return
        self._stopped = True
        began = time.perf_counter()
        if self._refresh is not None:
            self._refresh.stop()
        if self.http_server is not None:
            if not await self.drain.close(drain_secs, SHUTDOWN_QUIET_SECS):
                log.warning("%d requests still in flight after %s s; closing anyway", self.drain.active, drain_secs)
            self.http_server.stop()
            await self.http_server.close_all_connections()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            await self.metrics_server.close_all_connections()
        drained = time.perf_counter()
        connections = self.registry.connections()
        # Forgotten while the cache is still open; the closes that follow
        # find nothing left to clean up.
        await self.chat.close_all_connections()
        forgotten = time.perf_counter()
        await self.chat.outbox.close()
        await self.chat.profile_writes.close()
        for connection in connections:
            connection.close(1001, "Server is shutting down")
        await self.hub.stop()
        await self.bus.close()
        await self.cache.close()
        await self.database.close()
        if self.http_server is not None:
            ended = time.perf_counter()
            log.info("stopped in %.2f s: requests drained in %.2f s, %d sockets forgotten in %.2f s, closed in %.2f s",
                     ended - began, drained - began, len(connections), forgotten - drained, ended - forgotten)

    def describe(self, port: int) -> str:
        database = self.database.url.render_as_string(hide_password=True)
        cache = f"redis {self.settings.redis_url} (prefix {self.settings.redis_prefix})" if self.settings.redis_url else "in-process"
        metrics_host = (self.settings.metrics_bind(port) or ("", 0))[0]
        metrics_at = f"http://{metrics_host}:{self.metrics_port}/metrics" if self.metrics_port else "off"
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # "uvloop" or "asyncio"
        return (
            f"listening on http://{self.settings.host}:{port}/ · database {database} · cache {cache}"
            f" · metrics {metrics_at} · event loop {loop}"
        )
