"""Test clients that talk to a running server over real HTTP and WebSocket connections."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import sqlite3
import urllib.parse
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator

import pymysql
from sqlalchemy.engine import make_url
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from server.auth import sign_launch_params

EVENT_TIMEOUT_SECS = 5


@dataclass
class Response:
    status: int
    body: Any
    headers: Any

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body.get("response") is True

    @property
    def error_code(self) -> int | None:
        return self.body["error"]["code"] if self.body.get("response") is False else None


async def eventually(predicate, message="condition never became true", attempts: int = 250, pause: float = 0.02) -> None:
    """Wait until ``predicate()`` (sync or async) is true, with a bounded number of short pauses.

    The server forgets a closed socket in a callback after the close, so a
    test polls for that outcome instead of guessing how long it takes.
    ``message`` (a string, or a callable giving one) explains a failure.
    """
    for _ in range(attempts):
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(pause)
    raise AssertionError(message() if callable(message) else message)


async def close_and_wait(server: "ServerUnderTest", socket: "Socket") -> None:
    """Close a socket and wait until its process has let it go: out of the registry, its views ended."""
    socket.close()
    await eventually(lambda: not server.registry.user_sockets(socket.user_id, socket.socket_id)
                     and socket.socket_id not in server.chat_server.hub.closing)


def delete_event(conversation_id: int) -> dict:
    """The frame announcing a conversation's deletion."""
    return {"event": "delete_conversation", "data": {"conversation_id": conversation_id}}


class Socket:
    """An open WebSocket of a user; frames are collected in the background."""

    def __init__(
        self, connection: WebSocketClientConnection, socket_id: str, user_id: int,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.connection = connection
        # Awaited before a drain: with HTTP on another process, until that process applied the log.
        self.settle = settle
        self.socket_id = socket_id
        self.user_id = user_id
        self.frames: asyncio.Queue[tuple[dict, str | None] | None] = asyncio.Queue()
        self.close_code: int | None = None
        # The position of the last frame taken with next_frame (what a client resumes from).
        self.position: str | None = None
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.connection.read_message()
            if message is None:
                self.close_code = self.connection.close_code
                await self.frames.put(None)
                return
            frame = json.loads(message)
            await self.frames.put((frame, frame.pop("pos", None)))

    async def next_frame(self) -> dict | None:
        """The next frame, without its position (kept in ``self.position``); None once closed."""
        item = await asyncio.wait_for(self.frames.get(), EVENT_TIMEOUT_SECS)
        if item is None:
            return None
        frame, position = item
        if position is not None:
            self.position = position
        return frame

    async def expect(self, event: str) -> dict:
        """The next frame must be ``event``; return its data."""
        frame = await self.next_frame()
        assert frame is not None, f"socket closed while waiting for {event}"
        assert frame["event"] == event, f"expected {event}, got {frame}"
        return frame.get("data", {})

    async def assert_silent(self) -> None:
        """Nothing was queued for this socket: a ping's pong is the very next frame.

        The server writes a socket's frames in order and sends an action's
        events before its HTTP response, so once the response is in, a pong
        arriving first proves no event of that action was sent here.
        With HTTP on another process than the socket's, the socket's
        process first applies the log up to now (``ServerUnderTest.settle``).
        """
        if self.settle is not None:
            await self.settle()
        await self.connection.write_message(json.dumps({"event": "ping"}))
        frame = await self.next_frame()
        assert frame == {"event": "pong"}, f"unexpected frame {frame}"

    async def drain(self) -> list[dict]:
        """Every frame received so far (up to a ping round trip)."""
        if self.settle is not None:
            await self.settle()
        await self.connection.write_message(json.dumps({"event": "ping"}))
        frames = []
        while True:
            frame = await self.next_frame()
            if frame == {"event": "pong"}:
                return frames
            frames.append(frame)

    async def wait_closed(self) -> int | None:
        while True:
            frame = await self.next_frame()
            if frame is None:
                return self.close_code

    def close(self) -> None:
        self.connection.close()


class User:
    """A VK user with signed launch parameters, able to call the API and open sockets."""

    def __init__(self, server: "ServerUnderTest", user_id: int) -> None:
        self.server = server
        self.user_id = user_id
        self.launch = sign_launch_params(server.secret, user_id)
        self.sockets: list[Socket] = []

    async def connect(
        self, name: str | None = None, avatar: str | None = None, query: str | None = None, ws_url: str | None = None,
    ) -> Socket:
        """Open a socket (to another server if ``ws_url``) and wait for its ``connected`` event."""
        extra = {k: v for k, v in (("name", name), ("avatar", avatar)) if v is not None}
        url = f"{ws_url or self.server.ws_url}/v1/ws?{query if query is not None else self.launch}"
        if extra:
            url += "&" + urllib.parse.urlencode(extra)
        connection = await websocket_connect(url)
        first = json.loads(await connection.read_message())
        assert first["event"] == "connected", first
        assert first["data"]["user_id"] == self.user_id
        socket = Socket(connection, first["data"]["socket_id"], self.user_id, self.server.settle_hook())
        socket.position = first["pos"]
        self.sockets.append(socket)
        self.server.sockets.append(socket)
        return socket

    async def resume(self, position: str | None, ws_url: str | None = None) -> tuple[Socket, dict]:
        """Reconnect with ``resume=position`` (to another server if ``ws_url``); the socket and its first frame.

        The first frame is ``resumed`` or ``resume_failed``; either way it names the new socket.
        """
        query = self.launch + "&" + urllib.parse.urlencode({"resume": position or ""})
        connection = await websocket_connect(f"{ws_url or self.server.ws_url}/v1/ws?{query}")
        first = json.loads(await connection.read_message())
        assert first["event"] in ("resumed", "resume_failed"), first
        assert first["data"]["user_id"] == self.user_id
        socket = Socket(connection, first["data"]["socket_id"], self.user_id, self.server.settle_hook())
        socket.position = first["pos"]
        self.sockets.append(socket)
        self.server.sockets.append(socket)
        return socket, first

    async def call(
        self, method: str, path: str, body: Any = None, *, socket: Socket | str | None = None,
        headers: dict[str, str] | None = None, raw_body: bytes | str | None = None,
        content_type: str = "application/json", auth: bool = True,
    ) -> Response:
        request_headers = {"Authorization": f"VK {self.launch}"} if auth else {}
        if socket is not None:
            request_headers["X-Socket-Id"] = socket if isinstance(socket, str) else socket.socket_id
        if raw_body is None and body is not None:
            raw_body = json.dumps(body)
        if raw_body is not None:
            request_headers["Content-Type"] = content_type
        request_headers.update(headers or {})
        if raw_body is None and method in ("POST", "PUT", "PATCH"):
            raw_body = b""
        return await self.server.fetch(method, path, request_headers, raw_body)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, body: Any = None, **kwargs: Any) -> Response:
        return await self.call("POST", path, body, **kwargs)

    # Shortcuts for the routes, returning the checked successful body.

    async def create(self, name: str) -> int:
        response = await self.post("/v1/conversations/new", {"name": name})
        assert response.ok, response.body
        return response.body["conversation_id"]

    async def send(self, text: str, conversation_id: int | None = None) -> int:
        body: dict[str, Any] = {"text": text}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        response = await self.post("/v1/messages/send", body)
        assert response.ok, response.body
        return response.body["id"]

    async def join(self, conversation_id: int) -> list[dict]:
        response = await self.get(f"/v1/conversations/join/{conversation_id}")
        assert response.ok, response.body
        return response.body["messages"]

    async def view(self, conversation_id: int, socket: Socket | str | None = None) -> list[dict]:
        response = await self.get(f"/v1/conversations/view/{conversation_id}", socket=socket)
        assert response.ok, response.body
        return response.body["messages"]

    async def stop_view(self, conversation_id: int, socket: Socket | str | None = None) -> None:
        response = await self.get(f"/v1/conversations/stopView/{conversation_id}", socket=socket)
        assert response.body == {"response": True}, response.body

    async def info(self, conversation_id: int) -> dict:
        response = await self.get(f"/v1/conversations/info/{conversation_id}")
        assert response.ok, response.body
        return response.body["conversation"]

    async def conversations(self, mode: str = "joined", offset: int = 0) -> list[dict]:
        response = await self.get(f"/v1/conversations/get?mode={mode}&offset={offset}")
        assert response.ok, response.body
        return response.body["conversations"]


class ServerUnderTest:
    """A started ChatServer and what tests need to reach it."""

    def __init__(self, chat_server: Any, port: int, backend: str, http_port: int | None = None,
                 topology: str = "", http_chat_server: Any = None) -> None:
        self.chat_server = chat_server  # the server holding the sockets
        self.http_chat_server = http_chat_server or chat_server  # the one answering HTTP
        self.backend = backend  # "mysql" (MySQL + Redis) or "embedded"
        self.topology = topology or backend  # "two-processes": HTTP goes to another server than the sockets
        self.secret = chat_server.settings.vk_secret
        self.base_url = f"http://127.0.0.1:{http_port or port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.sockets: list[Socket] = []
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)

    def settle_hook(self) -> Callable[[], Awaitable[None]] | None:
        """What a socket awaits before a drain: nothing when one process answers HTTP and holds the sockets."""
        # A process of its own (tests/processes.py: no chat_server here) cannot be settled from here.
        http_chat_server = getattr(self, "http_chat_server", None)
        return self.settle if http_chat_server is not None and http_chat_server is not self.chat_server else None

    async def settle(self) -> None:
        """Every process here applied what the log holds now.

        Over HTTP a process answers after its own sockets were sent the events
        it announces; a socket on another process reads them independently
        (the log is partitioned: the answering process may not read them at
        all). Tests that drain such a socket right after an answer wait for
        its process to catch up first, instead of for luck.
        """
        servers = [self.chat_server] + ([self.http_chat_server] if self.http_chat_server is not self.chat_server else [])
        try:
            last = await self.chat_server.bus.last_id()
            for chat_server in servers:
                await chat_server.hub.reach(last)
        except Exception:
            pass  # Redis away (an outage test): nothing to catch up with

    @property
    def registry(self):
        return self.chat_server.registry

    @property
    def cache(self):
        return self.chat_server.cache

    @property
    def database(self):
        return self.chat_server.database

    def user(self, user_id: int) -> User:
        return User(self, user_id)

    async def connected_user(self, user_id: int, name: str | None = None, avatar: str | None = None) -> tuple[User, Socket]:
        user = self.user(user_id)
        return user, await user.connect(name=name, avatar=avatar)

    async def fetch(self, method: str, path: str, headers: dict[str, str], body: bytes | str | None) -> Response:
        request = HTTPRequest(
            self.base_url + path, method=method, headers=headers, body=body,
            allow_nonstandard_methods=True, request_timeout=30,
        )
        response = await self.http.fetch(request, raise_error=False)
        assert response.code != 599, f"no HTTP response: {response.error}"
        content_type = response.headers.get("Content-Type", "")
        if response.body:
            assert content_type.startswith("application/json"), (response.code, content_type, response.body[:200])
            parsed = json.loads(response.body)
        else:
            parsed = None
        return Response(response.code, parsed, response.headers)

    def close_sockets(self) -> None:
        for socket in self.sockets:
            socket.close()
        self.http.close()


@dataclass
class RawResponse:
    status: int | None  # None: the connection closed without a status line
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), (self.status, self.headers, self.body[:200])
        return json.loads(self.body)


async def raw_request(port: int, request: bytes, timeout_secs: float = 10) -> RawResponse:
    """Send bytes as they are (no client normalising the path or headers); read one answer.

    For inputs an HTTP client would refuse or rewrite: ``/../run.py``,
    invalid escapes, oversized headers. The request should say
    ``Connection: close`` so the answer ends with the connection.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the server may answer and close before it read everything
        data = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), timeout_secs):
                data += chunk
                if _complete(data, head_only=request.startswith(b"HEAD ")):
                    break
        except ConnectionError:
            pass
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):  # the interim answer to "Expect: 100-continue"
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        return RawResponse(None, {}, data)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, body)


def _complete(data: bytes, head_only: bool) -> bool:
    """Whether ``data`` holds a whole answer (the server may keep the connection open after it)."""
    head, separator, body = data.partition(b"\r\n\r\n")
    while separator and head.startswith(b"HTTP/1.1 100"):
        head, separator, body = body.partition(b"\r\n\r\n")
    if not separator:
        return False
    # An upgrade (the WebSocket's frames follow), and answers that never have a body.
    if head_only or head.startswith((b"HTTP/1.1 101", b"HTTP/1.1 204", b"HTTP/1.1 304")):
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@contextlib.contextmanager
def profile_writes_held(server: ServerUnderTest) -> Iterator[None]:
    """Hold the users table: every handshake of a new user waits in its profile's write."""
    settings = server.chat_server.settings
    if server.backend == "embedded":
        locker = sqlite3.connect(settings.sqlite_path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # the one writer's lock
        try:
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        return
    url = make_url(settings.database_url)
    locker = pymysql.connect(host=url.host, port=url.port or 3306, user=url.username or "root",
                             password=url.password or "", database=url.database, autocommit=True)
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLES users WRITE")
        yield
        with locker.cursor() as cursor:
            cursor.execute("UNLOCK TABLES")
    finally:
        locker.close()
