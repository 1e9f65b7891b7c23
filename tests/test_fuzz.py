"""Schemathesis against a live server on each backend, as an authenticated user holding a socket.

The server runs as its own process (``run.py``, as in production) and
schemathesis reads the OpenAPI document it serves, then generates thousands
of requests across every route: examples at the schema's boundaries
(coverage), random ones (fuzzing) and chains that follow the document's
links (stateful). A run passes when nothing answered 5xx, every answer had a
documented status, content type, headers and body, and the server is still
alive and ready afterwards. The number of cases is printed.

``CHAT_FUZZ_EXAMPLES`` (per operation) and ``CHAT_FUZZ_SEED`` change the run;
the seed is fixed by default so CI is reproducible.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from server.auth import sign_launch_params
from server.settings import Settings
from tests.outages import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES_PER_OPERATION = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("CHAT_FUZZ_SEED", "20261125")
RUN_TIMEOUT_SECS = 150
FUZZ_USER_ID = 7
OTHER_USER_ID = 8  # owns a few conversations, so ids from 1 up exist

CHECKS = [
    "not_a_server_error",            # no 5xx
    "status_code_conformance",       # every status is documented for its route
    "content_type_conformance",      # and its content type
    "response_headers_conformance",  # and its headers (Retry-After on 429)
    "response_schema_conformance",   # and the body validates against the documented schema
    "missing_required_header",       # Authorization missing: 401
    "ignored_auth",                  # a route documented as authenticated really checks
    "unsupported_method",            # other methods: 405 with Allow
    "allow_header_conformance",
    "use_after_free",                # a deleted conversation stays gone
    "ensure_resource_availability",  # a created conversation can be used at once
]
# Checks not run, and why (known and accepted):
# - positive_data_acceptance: a schema-valid request is still refused, by
#   design, when its X-Socket-Id is not one of the user's sockets (428), or
#   when a plain GET reaches /v1/ws without the upgrade headers (400);
# - negative_data_rejection: the API accepts integers given as decimal digits
#   in JSON bodies too (docs/API.md §1), which the schema documents as integers.


class ServerProcess:
    """``python run.py`` with the CHAT_* environment of the test's settings."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("CHAT_")}
        env.update(
            CHAT_HOST="127.0.0.1", CHAT_PORT=str(self.port), CHAT_DATA_DIR=str(data_dir),
            CHAT_DATABASE_URL=settings.database_url, CHAT_REDIS_URL=settings.redis_url,
            CHAT_REDIS_PREFIX=settings.redis_prefix, CHAT_VK_SECRET=settings.vk_secret,
            CHAT_METRICS_ADDR="127.0.0.1:0", CHAT_SEND_RATE_LIMIT="5", PYTHONUNBUFFERED="1",
        )
        self.env = env
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        self._spawn([sys.executable, "run.py"], open(self.log_path, "wb"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.get("/healthz")[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start: {self.log_path.read_text()[-2000:]}")

    def hold_socket(self, user_id: int) -> None:
        """A socket held open by ``run.py watch``, until the end of the test."""
        self._spawn([sys.executable, "run.py", "watch", "--user-id", str(user_id),
                     "--url", f"ws://127.0.0.1:{self.port}/v1/ws"], subprocess.DEVNULL)
        launch = sign_launch_params(self.env["CHAT_VK_SECRET"], user_id)
        deadline = time.monotonic() + 10
        while self.get("/v1/conversations/get", launch)[0] != 200:
            assert time.monotonic() < deadline, "the watching socket never opened"
            time.sleep(0.05)

    def _spawn(self, argv: list[str], stdout) -> None:
        self.processes.append(subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=stdout, stderr=subprocess.STDOUT))

    def get(self, path: str, launch: str | None = None, body: dict | None = None) -> tuple[int, dict | None]:
        request = urllib.request.Request(
            self.base_url + path, method="POST" if body is not None else "GET",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", **({"Authorization": f"VK {launch}"} if launch else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return 0, None

    def stop(self) -> None:
        for process in reversed(self.processes):  # watchers first, then the server
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def live_server(server_settings: Settings, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(server_settings, tmp_path)
    try:
        server.start()
        server.hold_socket(OTHER_USER_ID)
        server.hold_socket(FUZZ_USER_ID)
        yield server
    finally:
        server.stop()


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(live_server: ServerProcess, backend: str, capsys):
    other = sign_launch_params(live_server.env["CHAT_VK_SECRET"], OTHER_USER_ID)
    for name in ("Fuzz target one", "Fuzz target two", "Fuzz target three"):
        status, _ = live_server.get("/v1/conversations/new", other, {"name": name})
        assert status in (200, 409)  # 409: the MySQL database is the session's, it may exist
    launch = sign_launch_params(live_server.env["CHAT_VK_SECRET"], FUZZ_USER_ID)
    started = time.monotonic()
    result = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{live_server.base_url}/v1/openapi.json",
         "--header", f"Authorization: VK {launch}", "--checks", ",".join(CHECKS),
         "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", SEED, "--workers", "1",
         "--request-timeout", "10", "--no-color"],
        cwd=live_server.log_path.parent, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECS,
    )
    output = result.stdout + result.stderr
    counted = re.search(r"Test cases:\s*\n\s*(\d+) generated", output)
    cases = int(counted.group(1)) if counted else 0
    with capsys.disabled():
        print(f"\nschemathesis [{backend}]: {cases} cases in {time.monotonic() - started:.0f} s, "
              f"exit {result.returncode}")
    assert result.returncode == 0, output[-6000:]
    assert cases >= 1000, output[-3000:]
    # Still alive, still ready, and nothing crashed on the way.
    assert live_server.get("/healthz")[0] == 200
    assert live_server.get("/readyz") == (200, {"response": True, "checks": {"database": "ok", "cache": "ok"}})
    assert all(process.poll() is None for process in live_server.processes)
    assert "Traceback" not in live_server.log_path.read_text(errors="replace")
