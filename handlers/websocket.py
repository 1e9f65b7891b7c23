"""/v1/ws: the WebSocket every client holds open (docs/API.md §3).

The handshake is refused in the API's JSON before anything is written: the
upgrade headers and the Origin first, then the launch parameters and the
profile, and only then the profile is stored and the connection upgraded.
With ``resume=<position>`` the first frames are ``resumed`` (or
``resume_failed``) and the missed events; live frames wait behind them
(``release``). Once open, the handler talks to the chat service from ``open`` and
``on_close`` only. Outgoing frames go through a bounded queue per socket: a
frame is written at once when the socket keeps up; while a write is still
being flushed, later frames wait in the queue, and a socket whose queue
overflows is closed with 1013 so a stalled reader never holds memory or
time that belongs to the others.
"""

from __future__ import annotations

import json
import logging
import secrets
from asyncio import Future
from typing import Any, Iterable, Sequence

import tornado.web
import tornado.websocket
import voluptuous as vol
from tornado.iostream import StreamClosedError

from handlers.base import (
    BoundedRequestMixin,
    JsonErrorsMixin,
    as_api_error,
    authenticate,
    client_address,
    launch_params_from_header,
    origin_allowed,
    validate,
)
from handlers.validators import HttpUrl, Text
from server import metrics, wire
from server.admission import RETRY_AFTER_SECS, AddressCounts, HandshakeAdmission
from server.chat import ChatService
from server.drain import Drain
from server.errors import ForeignOrigin, NotAuthenticated, NotAWebSocket, ShuttingDown, StorageUnavailable
from server.settings import Settings
from storage.errors import is_storage_unavailable
from storage.records import Profile

log = logging.getLogger("chat.ws")

CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013
TEXT_OPCODE = 0x1
WS_VERSIONS = ("7", "8", "13")  # the protocol versions Tornado speaks


PROFILE_SCHEMA = vol.Schema(
    {vol.Optional("name"): Text(1, 100, strip=True), vol.Optional("avatar"): HttpUrl(500)},
    extra=vol.REMOVE_EXTRA,
)


@tornado.web.stream_request_body
class ChatSocketHandler(JsonErrorsMixin, BoundedRequestMixin, tornado.websocket.WebSocketHandler):
    """One client connection; also the registry's ``Connection``."""

    socket_id: str
    user_id: int
    # For the OpenAPI document (server.apidoc): the handshake's own parameters and refusals.
    parameters = PROFILE_SCHEMA
    extra_errors = (NotAWebSocket, ForeignOrigin, NotAuthenticated, StorageUnavailable)

    def initialize(
        self, chat: ChatService, settings: Settings, drain: Drain, admission: HandshakeAdmission,
        addresses: AddressCounts,
    ) -> None:
        self.chat = chat
        self.drain = drain
        self.admission = admission
        self.addresses = addresses
        self._address: str | None = None  # counted against its address's cap until the socket is gone
        self._admitted = False  # holds a place among the handshakes in progress
        self._reserved = False  # its id is in the cache, counted against the user's cap
        self._refusal: tuple[int, str] | None = None  # the close code and reason it gets instead of opening
        self.config = settings  # not self.settings: that is Tornado's application settings
        self.queue_limit = settings.ws_queue_limit
        self._profile: Profile | None = None
        # Frames waiting while the stream flushes: a plain list, as an empty
        # deque costs ten times its size on every idle socket.
        self._queue: list[bytes] = []
        self._flushing = False
        self._registered = False
        # Frames held back while the socket is set up (a resume sends what
        # was missed first); None once released.
        self._held: list[bytes] | None = []

    def check_origin(self, origin: str) -> bool:
        """Allow configured origins (a same-origin page never gets here)."""
        return origin_allowed(origin, self.config.cors_origins) or super().check_origin(origin)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Check the handshake, authenticate, store the profile, then upgrade; refusals are JSON.

        Refusals a browser must see (busy, too many sockets) are a close
        right after the upgrade instead: a page learns nothing of a refused
        handshake but that it failed.
        """
        try:
            await self._check_handshake()
        except Exception as error:
            metrics.HANDSHAKES.labels(metrics.reason_of(type(as_api_error(error)))).inc()
            self._give_back()
            raise
        try:
            await super().get(*args, **kwargs)  # returns once the socket is closed
        finally:
            if not self._registered:
                self._give_back()  # the upgrade failed, or open() refused: nothing opened

    def _give_back(self) -> None:
        """Release the handshake's place and, if its socket never opened, its reserved id and address count."""
        if not self._registered:
            self._uncount_address()
        if self._admitted:
            self._admitted = False
            self.admission.leave()
        if self._reserved:
            self._reserved = False
            self.chat.release_socket(self.user_id, self.socket_id)

    async def _check_handshake(self) -> None:
        if self.drain.closed:  # shutting down: no new socket only to close it again
            raise ShuttingDown()
        headers = self.request.headers
        connection_tokens = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
        if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in connection_tokens:
            raise NotAWebSocket()
        # What Tornado's handshake needs next; it would answer its own
        # non-JSON 400 or 426 without them, after the profile was stored.
        if not headers.get("Sec-WebSocket-Key") or headers.get("Sec-WebSocket-Version") not in WS_VERSIONS:
            raise NotAWebSocket()
        # Tornado's own cross-origin rule (Sec-Fetch-Site, then Origin against
        # Host, then check_origin), asked before anything is written; the
        # same check in super().get() then passes. Pinned: see requirements.txt.
        refusal = self._check_cross_origin(self.check_origin)
        if refusal is not None:
            log.info("handshake refused: %s", refusal)
            raise ForeignOrigin()
        user = authenticate(
            launch_params_from_header(headers.get("Authorization", "")) or self.request.query, self.config
        )
        profile = validate(
            PROFILE_SCHEMA,
            {name: self.get_query_argument(name) for name in ("name", "avatar") if self.get_query_argument(name, "")},
        )
        self.user_id = user.user_id
        self.socket_id = self.chat.new_socket_id()
        self.position_key = secrets.token_urlsafe(9)
        self.position_tail = wire.position_tail(self.socket_id, self.position_key)
        # An empty value is a position too (a malformed one), not the absence of a resume.
        self._resume = self.get_query_argument("resume", None)
        if not self.admission.enter():
            self._refusal = (wire.CLOSE_BUSY, wire.busy_reason(RETRY_AFTER_SECS))
            return
        self._admitted = True
        if self.addresses.cap:  # off by default: no address to work out
            address = client_address(self.request.remote_ip, headers.get("X-Real-IP"), self.config)
            if not self.addresses.take(address):
                self._refusal = (wire.CLOSE_TOO_MANY_SOCKETS, wire.TOO_MANY_FROM_ADDRESS_REASON)
                return
            self._address = address
        reserved, cached = await self.chat.reserve_socket(user.user_id, self.socket_id, self._resume is not None)
        if reserved is False:
            self._refusal = (wire.CLOSE_TOO_MANY_SOCKETS, wire.too_many_sockets_reason(self.config.max_sockets_per_user))
            return
        self._reserved = reserved is True
        # Counted in flight while it writes, so shutdown does not close the
        # database under it (the upgrade itself is not: it lasts as long as the socket).
        self.drain.enter()
        try:
            self._profile = await self.chat.prepare_connection(
                user.user_id, profile.get("name"), profile.get("avatar"), cached
            )
        finally:
            self.drain.leave()

    async def open(self, *args: str, **kwargs: str) -> None:
        """Invoked when the handshake completes: register, then say ``connected``.

        A socket that cannot be registered (the database is away) is closed
        with a reason and leaves no trace; Tornado would otherwise drop the
        TCP connection without a close frame and without ``on_close``.
        """
        if self._refusal is not None:
            code, reason = self._refusal
            metrics.HANDSHAKES.labels("busy" if code == wire.CLOSE_BUSY else "too_many_sockets").inc()
            self.close(code, reason)
            return
        assert self._profile is not None
        self._registered = True  # from here a close must unregister, even mid-open
        mirrored, self._reserved = self._reserved, False  # from here the socket's close takes the id out
        try:
            await self.chat.open_connection(self, self._profile, self._resume, mirrored)
        except Exception as error:
            self._registered = False
            self._give_back()
            metrics.count_storage_error(error)
            metrics.HANDSHAKES.labels(metrics.reason_of(type(as_api_error(error)))).inc()
            if is_storage_unavailable(error):
                log.error("socket %s not opened, storage unavailable: %s", self.socket_id, error)
                self.close(CLOSE_TRY_AGAIN_LATER, "Storage unavailable, reconnect later")
            else:
                log.exception("socket %s not opened", self.socket_id)
                self.close(CLOSE_INTERNAL_ERROR, "Internal error")
            return
        self._give_back()
        metrics.HANDSHAKES.labels("accepted").inc()

    def release(self, first: Sequence[bytes]) -> None:
        """Send ``first`` (the greeting and any missed frames), then the live frames held meanwhile."""
        held, self._held = self._held or [], None
        for frame in (*first, *held):
            self.send(frame)

    def on_message(self, message: str | bytes) -> None:
        """Invoked for each client frame: answer pings, ignore the rest."""
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError):  # not JSON, or nested past what the parser follows
            return
        if isinstance(frame, dict) and frame.get("event") == "ping":
            self.send(wire.PONG)

    def on_close(self) -> None:
        """Invoked when the connection is gone, whoever closed it."""
        self._unregister()

    def _uncount_address(self) -> None:
        if self._address is not None:
            self.addresses.give_back(self._address)
            self._address = None

    def _unregister(self) -> None:
        self._queue.clear()
        self._uncount_address()
        if self._registered:
            self._registered = False
            self.chat.forget_connection(self)

    def retire(self, code: int, reason: str) -> None:
        """Close now and stop counting as open at once; the caller forgets the socket (ChatService.retire)."""
        self._registered = False
        self._uncount_address()
        self._queue.clear()
        self.close(code, reason)

    # Outgoing frames

    def send(self, frame: bytes) -> None:
        """Queue a pre-encoded text frame; never blocks on the client."""
        if self._held is not None:
            self._held.append(frame)
            return
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if not self._flushing:
            self._write_batch((frame,))
        elif len(self._queue) < self.queue_limit:
            self._queue.append(frame)
        else:
            log.warning("socket %s of user %s is too slow, closing it", self.socket_id, self.user_id)
            metrics.SLOW_SOCKETS_CLOSED.inc()
            self.close(CLOSE_TRY_AGAIN_LATER, "Too slow: reconnect and refetch")
            # on_close only runs once the client answers the close (or after
            # Tornado's timeout); this socket must stop counting as open now.
            self._unregister()

    def _write_batch(self, frames: Iterable[bytes]) -> None:
        """Hand frames to the stream; if it could not flush them at once, wait for it."""
        protocol = self.ws_connection
        if protocol is None or protocol.is_closing():
            return
        flushed = None
        try:
            for frame in frames:
                # The protocol's own frame writer, not write_message(): that
                # wraps every write in a new Task, which for one event sent to
                # thousands of sockets is most of the cost. Opcode 0x1 is a
                # text frame; the payload is already UTF-8 JSON.
                flushed = protocol._write_frame(True, TEXT_OPCODE, frame)  # type: ignore[union-attr]
        except StreamClosedError:
            return
        if flushed is not None and not flushed.done():
            self._flushing = True
            flushed.add_done_callback(self._on_flushed)

    def _on_flushed(self, flushed: Future[None]) -> None:
        """Invoked when the stream's buffer has drained: send what piled up meanwhile."""
        self._flushing = False
        frames, self._queue = self._queue, []
        if flushed.exception() is None and frames:
            self._write_batch(frames)
