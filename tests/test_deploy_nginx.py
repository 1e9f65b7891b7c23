"""The deployment of docs/deploy.md: nginx (config/nginx.conf.template) in front of two run.py processes.

Users reach the chat only through nginx: their sockets spread over both
processes, their HTTP calls land on either, and the chat behaves as one.
Then one process is restarted, as a rolling deploy does, and the users go on
through nginx. CI installs Debian's nginx (.ci/run); without it this test
cannot run and says so.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import shutil
import subprocess
import time
from typing import Iterator

import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers import Socket, User, eventually
from tests.processes import REPO, ChatProcess, Deployment, collect

pytestmark = pytest.mark.gen_test(timeout=120)

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def _nginx_conf_module():
    loader = importlib.machinery.SourceFileLoader("nginx_conf", str(REPO / "scripts" / "nginx-conf"))
    spec = importlib.util.spec_from_loader("nginx_conf", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class Nginx(ChatProcess):
    """nginx on a free port, reached like a chat process."""

    def __init__(self, deployment: Deployment, ports: list[int]) -> None:
        super().__init__(deployment, "nginx")
        self.run_dir = deployment.directory / "nginx"
        self.run_dir.mkdir()
        conf = self.run_dir / "nginx.conf"
        conf.write_text(_nginx_conf_module().render(f"127.0.0.1:{self.port}", str(self.run_dir), ports))
        self.conf = conf

    def spawn(self, **settings: str) -> subprocess.Popen:
        log = open(self.run_dir / "stderr.log", "ab")
        self.process = subprocess.Popen([NGINX, "-p", str(self.run_dir), "-c", str(self.conf), "-g", "daemon off;"],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.process

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.run_dir.glob("*.log"))

    def close(self) -> None:
        # SIGTERM, not SIGKILL: a killed master leaves its workers behind, still listening.
        self.close_sockets()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def through_nginx(deployment: Deployment) -> Iterator[Deployment]:
    if NGINX is None:
        pytest.fail("nginx is not installed: `apt-get install nginx` (.ci/run installs it)")
    yield deployment


async def test_two_processes_behind_nginx_are_one_chat(through_nginx: Deployment):
    a, b = await through_nginx.start(2)
    nginx = Nginx(through_nginx, [a.port, b.port])
    through_nginx.processes.append(nginx)
    await nginx.start()

    users = [User(nginx, user_id) for user_id in (1, 2, 3, 4)]
    sockets: list[Socket] = [await user.connect() for user in users]
    # least_conn spreads the sockets: both processes hold some.
    holders = {socket.socket_id[:12] for socket in sockets}
    assert len(holders) == 2, holders
    conversation_id = await users[0].create("behind nginx")
    for user in users[1:]:
        await user.join(conversation_id)
    for socket in sockets:
        await socket.drain()

    await asyncio.gather(*(users[n % 4].send(f"n{n}", conversation_id) for n in range(20)))
    seen = [[m["id"] for m in await collect(socket, 20)] for socket in sockets]
    assert all(ids == seen[0] for ids in seen) and seen[0] == sorted(seen[0])

    # A rolling restart of one process: its sockets close (1001), the others stay;
    # the closed ones reconnect through nginx and resume from their last position.
    await a.terminate()
    await eventually(lambda: any(socket.close_code for socket in sockets), "no socket of the stopped process closed")
    closed = [n for n, socket in enumerate(sockets) if socket.close_code]
    assert all(sockets[n].close_code == 1001 for n in closed) and len(closed) < len(sockets)
    response = await users[1].post("/v1/messages/send", {"text": "during", "conversation_id": conversation_id})
    assert response.ok, response.body  # nginx sends it to the survivor
    for n in closed:
        socket, first = await users[n].resume(sockets[n].position)
        assert first["event"] == "resumed", first
        assert [f["data"]["message"] for f in await socket.drain() if f["event"] == "new_message"] == ["during"]
    for n, socket in enumerate(sockets):
        if n not in closed:
            assert [m["message"] for m in await collect(socket, 1)] == ["during"]
    await a.start()  # back in the pool


async def test_a_rolling_restart_through_nginx_brings_every_socket_back_at_once(through_nginx: Deployment):
    """Both processes restarted one after the other: every socket back through nginx within seconds.

    With a process marked down after a refused connect (max_fails=1), nginx let
    one new socket per fail_timeout through to a process back from its restart
    (a WebSocket counts as a success only when it ends), and answered the rest
    502 "no live upstreams" while the other process restarted.
    """
    a, b = await through_nginx.start(2)
    nginx = Nginx(through_nginx, [a.port, b.port])
    through_nginx.processes.append(nginx)
    await nginx.start()
    users = {user_id: User(nginx, user_id) for user_id in range(1, 101)}
    sockets = {user_id: await user.connect() for user_id, user in users.items()}

    async def come_back(user_id: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket, first = await users[user_id].resume(sockets[user_id].position)
            except HTTPClientError as refused:  # 502 from nginx, 503 from a process shutting down
                assert time.monotonic() < deadline, f"user {user_id} still refused: {refused}"
                await asyncio.sleep(0.1)
                continue
            assert first["event"] == "resumed", first
            sockets[user_id] = socket
            return

    for process in (a, b):
        await process.terminate()  # its sockets are closed with 1001 before it exits
        await asyncio.sleep(0.3)  # the close frames arrive
        closed = [user_id for user_id, socket in sockets.items() if socket.close_code is not None]
        assert closed and all(sockets[user_id].close_code == 1001 for user_id in closed)
        await asyncio.gather(*(come_back(user_id) for user_id in closed))
        await process.start()
    assert all(socket.close_code is None for socket in sockets.values())
