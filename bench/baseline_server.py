"""A minimal Tornado broadcast server: the floor the chat server is measured against.

It does the least a chat server must do to deliver a message: accept a
WebSocket, take a message over HTTP, JSON-encode the event once and write it
to every open socket. No authentication, no storage, no rooms, no queues.
Whatever the real server spends beyond this is the price of its features.

It speaks just enough of docs/API.md for ``bench/loadgen.py`` to drive it with
the same code path as the real server:

- ``/v1/ws`` accepts any connection (query ignored, except ``vk_user_id`` so
  the ``connected`` frame looks the same) and sends ``connected``;
- ``POST /v1/messages/send`` broadcasts ``new_message`` to every socket;
- ``POST /v1/conversations/new``, ``GET /v1/conversations/join/N`` and
  ``GET /v1/messages/get`` are no-ops that answer what the client needs.

Run: ``python bench/baseline_server.py --port 8090`` (or CHAT_HOST/CHAT_PORT).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import secrets
import signal
import time
import urllib.parse
from typing import Any

import tornado.web
import tornado.websocket


class Hub:
    """The set of open sockets and the message id counter."""

    def __init__(self) -> None:
        self.sockets: set[SocketHandler] = set()
        self.ids = itertools.count(1)

    def broadcast(self, payload: str) -> None:
        for socket in list(self.sockets):
            try:
                socket.write_message(payload)
            except tornado.websocket.WebSocketClosedError:
                self.sockets.discard(socket)


class SocketHandler(tornado.websocket.WebSocketHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self, *args: str, **kwargs: str) -> None:
        user_id = self.get_query_argument("vk_user_id", "0")
        self.hub.sockets.add(self)
        frame = {"event": "connected", "data": {"socket_id": secrets.token_urlsafe(12), "user_id": int(user_id) if user_id.isdigit() else 0}}
        self.write_message(json.dumps(frame))

    def on_message(self, message: str | bytes) -> None:
        pass  # like the real server, client frames other than ping are ignored

    def on_close(self) -> None:
        self.hub.sockets.discard(self)


class JsonHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub

    def body(self) -> dict[str, Any]:
        """The JSON or form body, as the real server accepts both."""
        if not self.request.body:
            return {}
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(self.request.body)
        return {k: v[-1] for k, v in urllib.parse.parse_qs(self.request.body.decode()).items()}

    def user_id(self) -> int:
        """The user the Authorization header names, unverified: only for the event."""
        launch = self.request.headers.get("Authorization", "").removeprefix("VK ")
        user_id = urllib.parse.parse_qs(launch).get("vk_user_id", ["0"])[0]
        return int(user_id) if user_id.isdigit() else 0

    def reply(self, **fields: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"response": True, **fields}))


class SendHandler(JsonHandler):
    def post(self) -> None:
        body = self.body()
        message_id = next(self.hub.ids)
        user_id = self.user_id()
        event = {
            "event": "new_message",
            "data": {
                "conversation_id": int(body.get("conversation_id") or 0),
                "id": message_id,
                "user_id": user_id,
                "name": f"id{user_id}",
                "avatar": "",
                "message": body.get("text", ""),
                "time": int(time.time()),
            },
        }
        self.hub.broadcast(json.dumps(event, ensure_ascii=False))  # encoded once for all sockets
        self.reply(id=message_id)


class NewConversationHandler(JsonHandler):
    def post(self) -> None:
        self.reply(conversation_id=1)


class MessagesHandler(JsonHandler):
    """Join and messages/get: nothing to store, nothing to return."""

    def get(self, *args: str) -> None:
        self.reply(messages=[])

    post = get


def make_app() -> tornado.web.Application:
    hub = Hub()
    return tornado.web.Application(
        [
            (r"/v1/ws", SocketHandler, {"hub": hub}),
            (r"/v1/messages/send", SendHandler, {"hub": hub}),
            (r"/v1/messages/get", MessagesHandler, {"hub": hub}),
            (r"/v1/conversations/new", NewConversationHandler, {"hub": hub}),
            (r"/v1/conversations/join/([^/]*)", MessagesHandler, {"hub": hub}),
        ]
    )


def raise_nofile_limit() -> None:
    """Lift the soft open-files limit to the hard one, for many idle sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(host: str, port: int) -> None:
    server = make_app().listen(port, address=host)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    print(f"baseline server listening on {host}:{port}", flush=True)
    await stopping.wait()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minimal Tornado broadcast server (benchmark baseline).")
    parser.add_argument("--host", default=os.environ.get("CHAT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CHAT_PORT", "8090")))
    args = parser.parse_args(argv)
    raise_nofile_limit()
    # The same event loop as our server's (CHAT_EVENT_LOOP, default uvloop), so the ratios compare servers, not loops.
    if os.environ.get("CHAT_EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
