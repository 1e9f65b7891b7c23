"""Fixtures for the browser tests: the chat server as a subprocess, and
Debian's Chromium driven by Playwright's sync API.

The tests need ``playwright`` (the Python package, pinned to 1.65.2) and
``/usr/bin/chromium`` (``apt-get install chromium``); Playwright's own browser
download is not used. Missing either one is a test failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import spawn_run_py

REPO = Path(__file__).resolve().parents[2]
# The server's checkout; another one may be named to try a client against it.
SERVER_ROOT = Path(os.environ.get("CHAT_TEST_SERVER_ROOT", REPO))
ARTIFACTS = REPO / "artifacts"
CHROMIUM = os.environ.get("CHAT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ChatServerProcess:
    """``python run.py`` on a free loopback port with its own data folder."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ChatServerProcess":
        settings = dict(
            CHAT_HOST="127.0.0.1",
            CHAT_PORT=str(self.port),
            CHAT_DATA_DIR=str(self.data_dir),
            CHAT_METRICS_ADDR="127.0.0.1:0",  # not the default port: runs side by side must not meet there
            PYTHONUNBUFFERED="1",
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"server-{int(time.time() * 1000)}.log"
        self.process = spawn_run_py({**settings, **self.env_extra}, self.log_path, root=SERVER_ROOT)
        self._wait_until_up()
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"chat server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base_url + "/", timeout=1) as res:
                    if res.status == 200:
                        return
            except urllib.error.HTTPError:
                return  # it answers; the test will tell what is wrong
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"chat server did not answer on port {self.port} in {SERVER_START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-6000:]
        return ""


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server(CHAT_VK_SECRET=...)`` starts a server; all stop at teardown."""
    servers: list[ChatServerProcess] = []

    def start(**env_extra: str) -> ChatServerProcess:
        server = ChatServerProcess(data_dir=tmp_path / f"data{len(servers)}", env_extra=env_extra)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def chat_server(start_server) -> ChatServerProcess:
    """A development server: no VK secret, so /v1/dev/signin exists."""
    return start_server()


@pytest.fixture(scope="module")
def browser():
    # Module scope: sync Playwright keeps an asyncio loop running in this
    # thread while it is started, which would break the Tornado tests that
    # run after this folder; stopping it at the module's end frees the loop.
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - environment problem
        pytest.fail(f"the playwright package is missing (pip install playwright==1.65.2): {exc}")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium is missing at {CHROMIUM} (apt-get install -y chromium)")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception:
        playwright.stop()
        raise
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def new_page(browser):
    """Factory: a page in a fresh browser context (one user each).

    Uncaught JavaScript errors on any page fail the test at teardown.
    """
    contexts = []
    errors: list[str] = []

    def make(viewport: dict | None = None):
        context = browser.new_context(viewport=viewport or {"width": 1280, "height": 800}, locale="ru-RU")
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
