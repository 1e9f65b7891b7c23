"""Fixtures: a real server per test, on each backend, with real clients.

Every test runs three times: on MySQL/MariaDB + Redis (``mysql``), on the
embedded SQLite + in-process cache (``embedded``), and on two processes
that share one MySQL database and one Redis prefix (``two-processes``):
every user's WebSockets open on the first and every HTTP call goes to the
second, so each rule of the contract is checked across processes. The two
share a Redis Cluster (``redis_cluster``: three masters the session starts on
free ports), so those rules also hold with the cache spread over nodes;
``mysql`` uses the shared Redis.
``CHAT_TEST_BACKENDS`` picks a subset. The MySQL database and the SQLite file are created for the
session and emptied before each test; every test gets its own Redis key
prefix, deleted afterwards, so parallel runs never meet.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pymysql
import pytest
import uvloop
from sqlalchemy.engine import make_url

from server.app import ChatServer
from server.settings import Settings
from storage.models import Base
from tests.helpers import ServerUnderTest
from tests.outages import RedisClusterInstance
from tests.processes import Deployment
from tests.redis_access import delete_prefix

MYSQL_URL = os.environ.get("CHAT_TEST_MYSQL_URL", "mysql+aiomysql://root@127.0.0.1:3306")
REDIS_URL = os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = [
    b.strip() for b in os.environ.get("CHAT_TEST_BACKENDS", "mysql,embedded,two-processes").split(",") if b.strip()
]
TEST_SECRET = "test-secret-" + uuid.uuid4().hex
TEST_REDIS_TIMEOUT_SECS = 3.0
# In-process servers run on the loop run.py runs them on (setting event_loop,
# default uvloop); CHAT_TEST_EVENT_LOOP=asyncio runs the suite on the standard one.
EVENT_LOOP = os.environ.get("CHAT_TEST_EVENT_LOOP", Settings.event_loop)
asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy() if EVENT_LOOP == "asyncio" else uvloop.EventLoopPolicy())


# Modules whose tests start a browser, run.py processes, nginx, or Redis and
# MariaDB servers of their own: marked ``heavy``, left out of the quick loop.
HEAVY_MODULES = {
    "test_redis_outage.py", "test_database_outage.py", "test_processes.py", "test_redis_cluster.py",
    "test_deploy_nginx.py", "test_shutdown.py", "test_bench_smoke.py",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name == "browser" or item.path.name in HEAVY_MODULES:
            item.add_marker(pytest.mark.heavy)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "server(**options): settings for the test's server")
    config.addinivalue_line("markers", "deployment(**env): CHAT_* settings of test_processes.py's processes")


@pytest.fixture(scope="session")
def mysql_database_url() -> Iterator[str]:
    """A throwaway MySQL database for this session."""
    yield from _throwaway_database(f"chat_test_{os.getpid()}_{uuid.uuid4().hex[:8]}")


def _throwaway_database(name: str) -> Iterator[str]:
    """Create a MySQL database, yield its URL, drop it."""
    url = make_url(MYSQL_URL)
    connect = dict(host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                   password=url.password or "")
    with pymysql.connect(**connect) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    yield url.set(database=name).render_as_string(hide_password=False)
    _drop_database(connect, name)


def _drop_database(connect: dict, name: str) -> None:
    """Drop a test database; a connection some test left open in a transaction must not hang the run.

    Every server a test starts is stopped, and its pool closed, at teardown;
    a connection still open here would be a leak. It is named on stderr and
    killed, so that the run ends instead of waiting on its table locks.
    """
    with pymysql.connect(**connect) as connection, connection.cursor() as cursor:
        cursor.execute("SET SESSION lock_wait_timeout = 20")
        try:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            return
        except pymysql.err.OperationalError:
            pass
        cursor.execute("SELECT id, command, time, state FROM information_schema.processlist WHERE db = %s", (name,))
        leftovers = cursor.fetchall()
        print(f"\n[conftest] connections left open on {name}: {leftovers}; killing them", file=sys.stderr)
        for row in leftovers:
            cursor.execute(f"KILL {int(row[0])}")
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="chat-test-") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterInstance]:
    """A private Redis Cluster for the session: three masters on free loopback ports, stopped at the end."""
    try:
        cluster = RedisClusterInstance(tmp_path_factory.mktemp("redis-cluster"))
    except FileNotFoundError as missing:
        pytest.fail(f"the two-processes topology runs on a Redis Cluster of its own, which needs redis-server and "
                    f"redis-cli: {missing} (Debian: apt-get install redis-server redis-tools)", pytrace=False)
    with cluster:
        yield cluster


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def server_settings(request: pytest.FixtureRequest, backend: str, data_dir: Path) -> Iterator[Settings]:
    marker = request.node.get_closest_marker("server")
    options = dict(marker.kwargs) if marker else {}
    prefix = f"chattest:{uuid.uuid4().hex}:"
    # No send rate limit unless a test asks for one: many tests send in bursts.
    values = dict(host="127.0.0.1", port=0, vk_secret=TEST_SECRET, data_dir=str(data_dir), max_members=100,
                  send_rate_limit=0)
    redis_url = ""
    if backend in ("mysql", "two-processes"):
        redis_url = request.getfixturevalue("redis_cluster").url if backend == "two-processes" else REDIS_URL
        # A test waits out a busy machine (a full run loads both cores);
        # the tests of Redis timing out set their own, short, timeout.
        values.update(
            database_url=request.getfixturevalue("mysql_database_url"), redis_url=redis_url, redis_prefix=prefix,
            redis_timeout=TEST_REDIS_TIMEOUT_SECS,
        )
    values.update(options)
    yield Settings(**values)
    if redis_url:
        delete_prefix(redis_url, prefix)


@pytest.fixture
def server(io_loop, backend: str, server_settings: Settings) -> Iterator[ServerUnderTest]:
    """A started server with empty tables, and clients that close at teardown.

    With ``two-processes`` two servers share the database and Redis: sockets
    open on the first (``server.chat_server``), HTTP calls go to the second.
    """
    chat_server = ChatServer(server_settings)
    http_server = ChatServer(server_settings) if backend == "two-processes" else chat_server

    async def start() -> tuple[int, int]:
        port = await chat_server.start(port=0)  # migrates the schema; no client knows the port yet
        async with chat_server.database.engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                if table.name != "global_chat":
                    await connection.execute(table.delete())
            await connection.execute(Base.metadata.tables["global_chat"].update().values(seq=0, last_message_id=0))
        http_port = port if http_server is chat_server else await http_server.start(port=0)
        return port, http_port

    try:
        port, http_port = io_loop.run_sync(start)
    except BaseException:
        # No teardown follows a failed setup: stop the first server if the second failed to start.
        for started in {chat_server, http_server}:
            io_loop.run_sync(started.stop)
        raise
    under_test = ServerUnderTest(chat_server, port, "embedded" if backend == "embedded" else "mysql",
                                 http_port=http_port, topology=backend, http_chat_server=http_server)
    yield under_test
    under_test.close_sockets()
    # A test may have restarted a server: stop what it holds now and what it started with.
    for started in {chat_server, http_server, under_test.chat_server, under_test.http_chat_server}:
        io_loop.run_sync(started.stop)


@pytest.fixture
def database_url() -> Iterator[str]:
    """A throwaway MySQL database of the test's own (real processes migrate it themselves)."""
    yield from _throwaway_database(f"chat_proc_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def deployment(io_loop, request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    """run.py processes on the shared Redis."""
    yield from _deployment(request, tmp_path, database_url, REDIS_URL)


@pytest.fixture
def cluster_deployment(io_loop, request: pytest.FixtureRequest, tmp_path: Path, database_url: str,
                       redis_cluster: RedisClusterInstance) -> Iterator[Deployment]:
    """run.py processes on the session's Redis Cluster."""
    yield from _deployment(request, tmp_path, database_url, redis_cluster.url)


def _deployment(request: pytest.FixtureRequest, tmp_path: Path, database_url: str, redis_url: str) -> Iterator[Deployment]:
    marker = request.node.get_closest_marker("deployment")
    prefix = f"chattest:{uuid.uuid4().hex}:"
    built = Deployment(tmp_path, database_url, redis_url, prefix, TEST_SECRET, **(marker.kwargs if marker else {}))
    yield built
    for process in built.processes:
        process.close()
    delete_prefix(redis_url, prefix)
