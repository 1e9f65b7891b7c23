"""Private database and cache servers that tests may stop, kill, pause and restart.

The shared MariaDB (3306) and Redis (6379) serve every test run on the
machine and must never be disturbed; outage tests start their own instance
on a free port with its own data directory instead::

    with MariaDBInstance(tmp_path / "db") as mariadb:
        url = mariadb.create_database("chat")   # a SQLAlchemy URL
        mariadb.pause()                          # SIGSTOP: connections hang, nothing fails
        mariadb.resume()

    with RedisInstance(tmp_path / "redis") as redis_server:
        redis_server.save()                      # SAVE: the snapshot a restart loads
        redis_server.kill()
        redis_server.start()

    with RedisClusterInstance(tmp_path / "cluster") as cluster:
        cluster.url                              # redis+cluster://127.0.0.1:p1,...

A database outage can also be played without a private server, by a
:class:`TcpProxy` in front of the shared one that the test cuts or makes hang.

Leaving the ``with`` block (or ``close()``) resumes a paused process and
kills it, so a failed test never leaves a frozen server behind.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pymysql
import redis as redis_sync

START_TIMEOUT_SECS = 60
STOP_TIMEOUT_SECS = 30


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _binary(*names: str) -> str:
    for name in names:
        for folder in (None, "/usr/sbin", "/usr/local/sbin"):
            found = shutil.which(name, path=folder)
            if found:
                return found
    raise FileNotFoundError(f"none of {names} is installed")


class ServerProcess:
    """A server process we started: signals, waiting until it answers, cleanup."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.paused = False

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """Whether the server accepts a client now."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Invoked before the first start (e.g. to create a data directory)."""

    def start(self) -> None:
        """Start (again, on the same port and data) and wait until it answers."""
        assert self.process is None or self.process.poll() is not None, f"{self.name} is running"
        self.prepare()
        log = open(self.directory / f"{self.name}.log", "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        log.close()
        self.paused = False
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.directory}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not answer within {START_TIMEOUT_SECS} s")
            time.sleep(0.1)

    def _signal(self, signum: int) -> None:
        assert self.process is not None and self.process.poll() is None, f"{self.name} is not running"
        self.process.send_signal(signum)

    def pause(self) -> None:
        """SIGSTOP: the process holds its sockets and answers nothing (a frozen server)."""
        self._signal(signal.SIGSTOP)
        self.paused = True
        # The signal is delivered asynchronously: wait until the kernel shows it stopped,
        # or a query sent right after could still be answered.
        deadline = time.monotonic() + STOP_TIMEOUT_SECS
        while time.monotonic() < deadline and self._state() != "T":
            time.sleep(0.005)

    def _state(self) -> str:
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:  # type: ignore[union-attr]
                return stat.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return ""

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        """SIGTERM (a clean shutdown) and wait for the exit."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.paused:
            self.resume()
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT_SECS)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is flushed."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()
        self.paused = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.paused:
            self.resume()
        self.kill()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class MariaDBInstance(ServerProcess):
    """A private ``mariadbd`` on a free port, with its own data directory, root without password."""

    name = "mariadbd"

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.datadir = self.directory / "data"
        self.socket_path = self.directory / "mysqld.sock"

    def prepare(self) -> None:
        if self.datadir.exists():
            return
        subprocess.run(
            [_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={self.datadir}",
             "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )

    def command(self) -> list[str]:
        return [
            _binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}",
            f"--socket={self.socket_path}", f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root",
            f"--pid-file={self.directory / 'mariadbd.pid'}", "--skip-grant-tables",
            "--skip-log-bin", "--innodb-buffer-pool-size=32M", "--max-connections=200",
            "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
        ]

    def _connect(self, **options) -> pymysql.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", **options)

    def answers(self) -> bool:
        try:
            self._connect(connect_timeout=1).close()
            return True
        except pymysql.err.OperationalError:
            return False

    def create_database(self, name: str = "chat") -> str:
        """Create (or empty) a database; return its SQLAlchemy URL."""
        with self._connect() as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        return self.url(name)

    def url(self, database: str = "chat") -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{database}"

    def query(self, sql: str, database: str = "chat") -> list[tuple]:
        """Run one statement on a fresh connection; return its rows."""
        with self._connect(database=database, autocommit=True) as connection, connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())


class RedisInstance(ServerProcess):
    """A private ``redis-server`` on a free port; snapshots (SAVE) go to its directory.

    It never saves on its own (``--save ""``): a restart after ``save()``
    loads exactly that snapshot, and after ``kill()`` without one, nothing.
    """

    name = "redis-server"

    def command(self) -> list[str]:
        return [
            _binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), "--dbfilename", "dump.rdb",
            "--daemonize", "no", "--protected-mode", "no",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis_sync.Redis:
        return redis_sync.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis_sync.exceptions.ConnectionError:
            return False

    def save(self) -> None:
        """SAVE: write the snapshot a later start loads."""
        with self.client() as client:
            client.save()

    def forget_snapshot(self) -> None:
        (self.directory / "dump.rdb").unlink(missing_ok=True)


class RedisClusterNode(RedisInstance):
    """One master of a :class:`RedisClusterInstance`; its cluster state goes to ``nodes-<port>.conf``.

    The nodes talk to each other on a port of their own (by default the
    client port + 10000, which may be taken or past 65535): a free one too
    (``--cluster-port``, Redis 7).
    """

    name = "redis-cluster-node"

    def __init__(self, directory: Path, config_dir: Path) -> None:
        super().__init__(directory)
        self.bus_port = free_port()
        self.config_file = Path(config_dir) / f"nodes-{self.port}.conf"

    def command(self) -> list[str]:
        return [
            _binary("redis-server"), "--cluster-enabled", "yes", "--cluster-config-file", str(self.config_file),
            "--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
            "--protected-mode", "no",
        ]


class RedisClusterInstance:
    """A private Redis Cluster: three masters on free loopback ports, no replicas.

    ``start()`` starts the three ``redis-server --cluster-enabled yes``, joins
    them with ``redis-cli --cluster create`` (the slots split in three) and
    returns once every node says ``cluster_state:ok``; ``close()`` kills only
    these three processes.
    """

    NODES = 3

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        _binary("redis-server")  # FileNotFoundError now rather than at start()
        self.redis_cli = _binary("redis-cli")
        self.nodes = [RedisClusterNode(self.directory / f"node-{i}", self.directory) for i in range(self.NODES)]

    @property
    def url(self) -> str:
        """The seed nodes, as ``CHAT_REDIS_URL`` takes them."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def client(self) -> redis_sync.RedisCluster:
        return redis_sync.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def cli(self, *args: str, port: int | None = None) -> str:
        """``redis-cli`` against a node (the first by default); its output."""
        done = subprocess.run(
            [self.redis_cli, "-h", "127.0.0.1", "-p", str(port or self.nodes[0].port), *args],
            capture_output=True, text=True, timeout=START_TIMEOUT_SECS,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        self.cli("--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                 "--cluster-replicas", "0", "--cluster-yes")
        # `--cluster create` returns once the nodes agree on the configuration;
        # each node may still need a moment to call the cluster ok.
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not all("cluster_state:ok" in self.cli("cluster", "info", port=node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster in {self.directory} never reached cluster_state:ok")
            time.sleep(0.05)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> "RedisClusterInstance":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection and refuses new ones.

    Runs on the test's event loop, like the server under test.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()  # one per client connection
        self.hang = False  # accept, but forward nothing: a database that stopped answering

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """The target is away: close the listener and every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.hang:
            return  # held open, never answered, until cut()
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.add(target_writer)
        await asyncio.gather(self._pipe(client_reader, target_writer), self._pipe(target_reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
