"""Real ``run.py`` processes sharing one database and one Redis prefix, for tests that need processes.

``Deployment`` starts and stops them; each ``ChatProcess`` is reached over
the network with the clients of tests/helpers.py. The fixtures
``database_url`` and ``deployment`` (tests/conftest.py) give a test its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping

from tornado.httpclient import AsyncHTTPClient

from tests.helpers import ServerUnderTest, Socket
from tests.outages import free_port

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECS = 30


def spawn_run_py(settings: Mapping[str, str], log_path: Path, root: Path = REPO) -> subprocess.Popen:
    """``python run.py`` with exactly these CHAT_* settings (none inherited), its output appended to ``log_path``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CHAT_")}
    env.update(settings)
    with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
        return subprocess.Popen([sys.executable, "run.py"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


class ChatProcess(ServerUnderTest):
    """One ``python run.py`` of the deployment, reached over the network."""

    def __init__(self, deployment: "Deployment", name: str) -> None:
        self.deployment = deployment
        self.name = name
        self.port = free_port()
        self.backend = "mysql"
        self.topology = "processes"
        self.secret = deployment.secret
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.sockets: list[Socket] = []
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)
        self.process: subprocess.Popen | None = None

    def spawn(self, **settings: str) -> subprocess.Popen:
        self.process = spawn_run_py(
            {**self.deployment.env, "CHAT_PORT": str(self.port), **settings},
            self.deployment.directory / f"{self.name}.log",
        )
        return self.process

    async def start(self) -> None:
        self.spawn()
        await self.started()

    async def started(self) -> None:
        """Return once the spawned process answers /healthz."""
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while True:
            assert self.process.poll() is None, f"{self.name} exited at start-up: {self.log()[-2000:]}"
            try:
                if (await self.http.fetch(self.base_url + "/healthz", raise_error=False)).code == 200:
                    return
            except (ConnectionRefusedError, OSError):
                pass
            assert time.monotonic() < deadline, f"{self.name} never started listening"
            await asyncio.sleep(0.1)

    def log(self) -> str:
        return (self.deployment.directory / f"{self.name}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power loss."""
        self.process.kill()
        self.process.wait()

    async def terminate(self) -> None:
        """SIGTERM, the clean stop of a rolling deploy; wait for the exit."""
        self.process.send_signal(signal.SIGTERM)
        while self.process.poll() is None:
            await asyncio.sleep(0.05)
        assert self.process.returncode == 0, self.log()[-2000:]

    def close(self) -> None:
        self.close_sockets()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Deployment:
    """Processes sharing one database and one Redis prefix."""

    def __init__(self, directory: Path, database_url: str, redis_url: str, prefix: str, secret: str,
                 **settings: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.secret = secret
        self.env = {
            "CHAT_HOST": "127.0.0.1", "CHAT_VK_SECRET": secret, "CHAT_DATA_DIR": str(directory),
            "CHAT_DATABASE_URL": database_url, "CHAT_REDIS_URL": redis_url, "CHAT_REDIS_PREFIX": prefix,
            "CHAT_SEND_RATE_LIMIT": "0", "CHAT_METRICS_ADDR": "off", **settings,
        }
        self.processes: list[ChatProcess] = []

    def process(self, name: str) -> ChatProcess:
        process = ChatProcess(self, name)
        self.processes.append(process)
        return process

    async def start(self, count: int) -> list[ChatProcess]:
        started = [self.process(chr(ord("a") + i)) for i in range(count)]
        for process in started:  # all at once, as systemd starts them: they migrate one after the other
            process.spawn()
        for process in started:
            await process.started()
        return started


def texts(frames: list[dict]) -> list[str]:
    return [frame["data"]["message"] for frame in frames if frame["event"] == "new_message"]


async def collect(socket: Socket, count: int) -> list[dict]:
    """The next ``count`` new_message frames of a socket (other events skipped)."""
    messages: list[dict] = []
    while len(messages) < count:
        frame = await socket.next_frame()
        assert frame is not None, "socket closed"
        if frame["event"] == "new_message":
            messages.append(frame["data"])
    return messages


