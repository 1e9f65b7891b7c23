"""/healthz and /readyz over real HTTP, and /readyz telling the truth while a dependency is away.

The outage tests take away only what they started: their own redis-server,
and a TCP proxy in front of the shared MariaDB.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from tornado.httpclient import AsyncHTTPClient

from server.app import ChatServer
from server.health import READY_TIMEOUT_SECS
from server.settings import Settings
from tests.helpers import ServerUnderTest, eventually
from tests.outages import RedisInstance, TcpProxy

pytestmark = pytest.mark.gen_test


async def probe(base_url: str, path: str) -> tuple[int, Any]:
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(base_url + path, raise_error=False, request_timeout=10)
    finally:
        client.close()
    return response.code, json.loads(response.body)


async def test_probes_answer_without_authentication(server: ServerUnderTest):
    assert await probe(server.base_url, "/healthz") == (200, {"response": True})
    assert await probe(server.base_url, "/readyz") == (
        200, {"response": True, "checks": {"database": "ok", "cache": "ok"}}
    )


class Started:
    """A ChatServer on settings of the test's own, stopped at the end of the block."""

    def __init__(self, settings: Settings) -> None:
        self.chat_server = ChatServer(settings)

    async def __aenter__(self) -> str:
        port = await self.chat_server.start(port=0)
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.chat_server.stop()


async def ready_state(base_url: str) -> tuple[int, dict[str, str]]:
    status, body = await probe(base_url, "/readyz")
    return status, body["checks"] if status == 200 else body["error"]["checks"]


@pytest.mark.parametrize("backend", ["embedded"])
async def test_readyz_is_503_naming_the_cache_while_redis_is_away(server_settings: Settings, tmp_path):
    redis_server = RedisInstance(tmp_path / "redis")
    redis_server.start()
    try:
        settings = dataclasses.replace(server_settings, redis_url=redis_server.url)
        async with Started(settings) as base_url:
            assert await ready_state(base_url) == (200, {"database": "ok", "cache": "ok"})

            redis_server.kill()
            status, body = await probe(base_url, "/readyz")
            assert status == 503
            assert body == {"response": False, "error": {
                "code": 503, "message": "Not ready: cache",
                "checks": {"database": "ok", "cache": "unavailable"}}}
            assert await probe(base_url, "/healthz") == (200, {"response": True})  # alive, just not ready

            redis_server.start()  # same port, as a restarted Redis
            await eventually(lambda: _is_ready(base_url), "readyz never came back after Redis returned")

            redis_server.pause()  # listening, never answering: the deadline decides
            started = time.monotonic()
            assert await ready_state(base_url) == (503, {"database": "ok", "cache": "timeout"})
            assert time.monotonic() - started < READY_TIMEOUT_SECS + 1.5
            redis_server.resume()
            await eventually(lambda: _is_ready(base_url), "readyz never came back after Redis resumed")
    finally:
        redis_server.close()


@pytest.mark.parametrize("backend", ["mysql"])
async def test_readyz_is_503_naming_the_database_while_mysql_is_away(server_settings: Settings):
    url = make_url(server_settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 3306)
    await proxy.start()
    settings = dataclasses.replace(
        server_settings, database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        redis_url="",
    )
    try:
        async with Started(settings) as base_url:
            assert await ready_state(base_url) == (200, {"database": "ok", "cache": "ok"})

            await proxy.cut()
            assert await ready_state(base_url) == (503, {"database": "unavailable", "cache": "ok"})
            assert await probe(base_url, "/healthz") == (200, {"response": True})

            await proxy.start()
            await eventually(lambda: _is_ready(base_url), "readyz never came back after MySQL returned")

            proxy.hang = True  # connections accepted, never answered
            await proxy.cut()
            await proxy.start()
            # The pool's connection from before the cut fails at once (lost);
            # the next probe connects anew and waits for the deadline.
            states = []
            for _ in range(3):
                started = time.monotonic()
                states.append(await ready_state(base_url))
                if states[-1][1]["database"] == "timeout":
                    break
            assert states[-1] == (503, {"database": "timeout", "cache": "ok"}), states
            assert all(status == 503 for status, _ in states)
            assert time.monotonic() - started < READY_TIMEOUT_SECS + 1.5
            proxy.hang = False
            await proxy.cut()
            await proxy.start()
            await eventually(lambda: _is_ready(base_url), "readyz never came back after MySQL answered again")
    finally:
        await proxy.cut()


async def _is_ready(base_url: str) -> bool:
    return (await probe(base_url, "/readyz"))[0] == 200
