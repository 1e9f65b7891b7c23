#!/usr/bin/env python3
"""Start the chat server, or print signed launch parameters for trying it.

    python run.py                      serve (settings: config/chat.toml + CHAT_* env)
    python run.py sign --user-id 5     print launch parameters signed for user 5
    python run.py migrate              create or upgrade the database schema and exit
    python run.py watch --user-id 5    hold a WebSocket open as user 5 and print its events
    python run.py apidoc               write docs/asyncapi.json from server/wire_schemas.py
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from server import eventloop
from server.app import ChatServer, SettingsConflict
from server.auth import load_or_create_secret, sign_launch_params
from server.settings import load_settings

log = logging.getLogger("chat")

GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


async def serve() -> None:
    server = ChatServer(load_settings())
    if server.dev_secret:
        log.warning(
            "CHAT_VK_SECRET is not set: using a generated development secret from %s "
            "(for local use only; set the VK app's secret key in production)",
            server.settings.data_dir,
        )
    try:
        port = await server.start()
    except SettingsConflict as conflict:
        log.error("refusing to start: %s", conflict)
        await server.stop()
        sys.exit(2)
    # Everything alive now (modules, the app) lives as long as the process:
    # keep it out of the cycle collector's sight, and collect young objects
    # less often. Measured in bench/ (docs/BENCHMARKS.md): it trims the
    # delivery-latency tail, which full collections otherwise stretch.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    log.info("chat server %s", server.describe(port))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await server.stop()


async def migrate() -> None:
    server = ChatServer(load_settings())
    await server.database.migrate()
    await server.database.close()
    await server.cache.close()


def write_apidoc() -> None:
    import json
    from pathlib import Path

    from server.apidoc import ASYNCAPI_FILE, asyncapi_document

    path = Path(__file__).resolve().parent / ASYNCAPI_FILE
    path.write_text(json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


def sign(user_id: int) -> None:
    settings = load_settings()
    secret = settings.vk_secret or load_or_create_secret(settings.data_dir)
    print(sign_launch_params(secret, user_id))


async def watch(user_id: int, url: str) -> None:
    from tornado.websocket import websocket_connect

    settings = load_settings()
    secret = settings.vk_secret or load_or_create_secret(settings.data_dir)
    connection = await websocket_connect(f"{url}?{sign_launch_params(secret, user_id)}")
    while (frame := await connection.read_message()) is not None:
        print(frame, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the server (the default)")
    commands.add_parser("migrate", help="create or upgrade the schema and exit")
    commands.add_parser("apidoc", help="write docs/asyncapi.json (the OpenAPI document is served live)")
    sign_parser = commands.add_parser("sign", help="print signed launch parameters")
    sign_parser.add_argument("--user-id", type=int, required=True)
    watch_parser = commands.add_parser("watch", help="print the events a user's socket receives")
    watch_parser.add_argument("--user-id", type=int, required=True)
    watch_parser.add_argument("--url", default=None, help="default: ws://CHAT_HOST:CHAT_PORT/v1/ws")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "sign":
        if args.user_id <= 0:
            parser.error("--user-id must be positive")
        sign(args.user_id)
    elif args.command == "watch":
        settings = load_settings()
        eventloop.run(watch(args.user_id, args.url or f"ws://{settings.host}:{settings.port}/v1/ws"), settings.event_loop)
    elif args.command == "apidoc":
        write_apidoc()
    elif args.command == "migrate":
        event_loop = load_settings().event_loop  # a bad setting is refused before anything starts
        eventloop.run(migrate(), event_loop)
    else:
        event_loop = load_settings().event_loop
        eventloop.run(serve(), event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
