"""The Tornado application: routes, services, start-up and shutdown.

:class:`ChatServer` owns everything with a lifetime (database engine, cache
client, registry, the periodic socket-cache refresh) so tests and ``run.py``
start and stop the same thing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.web

from handlers import conversations, dev, messages
from handlers.base import NotFoundHandler
from handlers.websocket import ChatSocketHandler, StaticHandler
from server.auth import load_or_create_secret
from server.chat import ChatService
from server.drain import Drain
from server.registry import Registry
from server.settings import Settings
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


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request: method, path (never the query: it carries signatures), status, ms."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    access_log.log(
        level, "%s %s %d %.1fms", handler.request.method, handler.request.path, status,
        1000.0 * handler.request.request_time(),
    )


class ChatServer:
    """The whole server: build with settings, ``await start()``, ``await stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.dev_secret = not settings.vk_secret
        if self.dev_secret:
            Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
            settings = dataclasses.replace(settings, vk_secret=load_or_create_secret(settings.data_dir))
        self.settings = settings
        self.database = Database(settings.effective_database_url, settings.db_timeout)
        self.cache = create_cache(settings.redis_url, settings.redis_prefix)
        self.registry = Registry()
        self.chat = ChatService(settings, self.database, self.cache, self.registry)
        self.drain = Drain()
        self.http_server: tornado.httpserver.HTTPServer | None = None
        self._refresh: tornado.ioloop.PeriodicCallback | None = None

    @property
    def dev_signin_enabled(self) -> bool:
        """Development sign-in exists only with a generated secret on a loopback address."""
        return self.dev_secret and is_loopback(self.settings.host)

    def make_app(self) -> tornado.web.Application:
        services = {"chat": self.chat, "settings": self.settings, "drain": self.drain}
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
            (r"/v1/ws", ChatSocketHandler, services),
        ]
        if self.dev_signin_enabled:
            routes.append((r"/v1/dev/signin", dev.DevSigninHandler, services))
        if WEB_DIR.is_dir():
            routes.append(
                (r"/((?!v1/).*)", StaticHandler, {"path": str(WEB_DIR), "default_filename": "index.html"})
            )
        return tornado.web.Application(
            routes,
            default_handler_class=NotFoundHandler,
            default_handler_args=services,
            log_function=log_request,
            websocket_ping_interval=WS_PING_INTERVAL_SECS,
            websocket_ping_timeout=WS_PING_TIMEOUT_SECS,
            websocket_max_message_size=WS_MAX_MESSAGE_BYTES,
            compress_response=False,
        )

    async def start(self, port: int | None = None) -> int:
        """Migrate, reset stale socket ids, listen; return the bound port."""
        await self.database.migrate()
        # No socket of this process is open yet; ids a crashed one left are stale.
        await self.cache.forget_all_sockets()
        self.http_server = tornado.httpserver.HTTPServer(
            self.make_app(), max_buffer_size=MAX_BUFFERED_BODY_BYTES, max_header_size=MAX_READ_HEADER_BYTES,
            xheaders=False,
        )
        sockets = tornado.netutil.bind_sockets(self.settings.port if port is None else port, self.settings.host)
        self.http_server.add_sockets(sockets)
        self._refresh = tornado.ioloop.PeriodicCallback(self._refresh_socket_cache, SOCKET_REFRESH_SECS * 1000)
        self._refresh.start()
        return sockets[0].getsockname()[1]

    async def _refresh_socket_cache(self) -> None:
        try:
            await self.chat.refresh_socket_cache()
        except Exception:
            log.exception("socket cache refresh failed")

    async def stop(self, drain_secs: float = SHUTDOWN_DRAIN_SECS) -> None:
        """Shut down without cutting a request: refuse new ones, let those in flight answer, then close.

        New requests and handshakes get 503 from now on; requests in flight
        (a send waiting for its commit) finish with the database still open,
        for at most ``drain_secs``. Only then the listening socket and the
        connections close, every WebSocket with 1001, and the storage.
        """
        if self._refresh is not None:
            self._refresh.stop()
        if self.http_server is not None:
            if not await self.drain.close(drain_secs, SHUTDOWN_QUIET_SECS):
                log.warning("%d requests still in flight after %s s; closing anyway", self.drain.active, drain_secs)
            self.http_server.stop()
            await self.http_server.close_all_connections()
        connections = self.registry.connections()
        # Forgotten while the cache is still open; the closes that follow
        # find nothing left to clean up.
        await self.chat.close_all_connections()
        await self.chat.outbox.close()
        for connection in connections:
            connection.close(1001, "Server is shutting down")
        await self.cache.close()
        await self.database.close()

    def describe(self, port: int) -> str:
        database = self.database.url.render_as_string(hide_password=True)
        cache = f"redis {self.settings.redis_url} (prefix {self.settings.redis_prefix})" if self.settings.redis_url else "in-process"
        return f"listening on http://{self.settings.host}:{port}/ · database {database} · cache {cache}"
