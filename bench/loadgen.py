"""Load generator: drives a chat server (ours or the baseline) over loopback.

Workloads (each bounded in count and in time by ``--timeout``):

- ``fanout``: R receivers, all members of one conversation, each holding one
  WebSocket; K messages sent over HTTP with C requests in flight by senders
  that are members too. Measures send throughput, deliveries per second and
  delivery latency (send start → frame received), and checks that every
  receiver got every message exactly once, in ascending id order, in the same
  order as every other receiver.
- ``global``: the same through the global chat (conversation 0); receivers
  subscribe with ``GET /v1/messages/get?chat=0``.
- ``idle``: N authenticated sockets that just stay open; measures the server
  process's RSS growth per socket (``/proc/<pid>/status`` VmRSS). The client
  side can be split over ``--procs`` processes for large N.

Only Tornado's own clients are used (``websocket_connect``, ``AsyncHTTPClient``)
so the suite needs nothing beyond what the server already depends on.

Each message's text carries a random run tag and a sequence number
(``bm<tag>:<seq>``) so the receiver side can match frames to sends without
trusting anything the server adds. Send times live in this process
(``time.perf_counter``), so the delivery workloads run in one process.

Usable as a library (``run_delivery``, ``run_idle``) — ``bench/run.py`` does
that — or from the command line::

    python -m bench.loadgen fanout --url http://127.0.0.1:8080 --secret S -R 50 -K 1000 -C 10
    python -m bench.loadgen idle --url http://127.0.0.1:8080 --secret S --pid 1234 --sockets 2000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import os
import random
import resource
import secrets
import statistics
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from bench.launch import sign_launch_params

T = TypeVar("T")

NEW_MESSAGE = "new_message"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the server under test listens, and how to sign users for it."""

    base_url: str  # e.g. http://127.0.0.1:8080
    secret: str
    pid: int | None = None  # the server process, for RSS and CPU readings
    # Further processes of the same chat: user N's socket goes to process
    # N mod n, and their HTTP calls to the next one, so every delivery and
    # every call crosses processes.
    more_urls: tuple[str, ...] = ()
    more_pids: tuple[int, ...] = ()
    metrics_token: str | None = None  # CHAT_METRICS_TOKEN: /metrics on each process's API port (nproc)

    @property
    def ws_url(self) -> str:
        return "ws" + self.base_url.removeprefix("http") + "/v1/ws"

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.base_url, *self.more_urls)

    def ws_url_for(self, user_id: int) -> str:
        return "ws" + self.urls[user_id % len(self.urls)].removeprefix("http") + "/v1/ws"

    def http_url_for(self, user_id: int) -> str:
        return self.urls[(user_id + 1) % len(self.urls)]

    def cpu_seconds(self) -> float | None:
        """User+system CPU time of every server process so far."""
        readings = [read_cpu_seconds(pid) for pid in (self.pid, *self.more_pids)]
        return None if any(r is None for r in readings) else sum(readings)  # type: ignore[arg-type]


class ApiError(Exception):
    """An HTTP call that did not answer 200 with ``"response": true``."""


# --- small helpers ---------------------------------------------------------


def raise_nofile_limit() -> int:
    """Lift this process's soft open-files limit to the hard one; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def read_rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` in KiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def read_cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU time of ``pid`` so far, from /proc/<pid>/stat."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name may contain spaces; fields after ')' are fixed.
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def percentiles_ms(samples: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of durations given in seconds, in milliseconds (nearest rank)."""
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        index = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": round(ordered[-1] * 1000, 3)}


async def gather_limited(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T | BaseException]:
    """Run coroutine factories with at most ``limit`` at a time; keep exceptions as results."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs), return_exceptions=True)


# --- clients ---------------------------------------------------------------


class Users:
    """Signed launch parameters per user id, signed once and reused."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._launch: dict[int, str] = {}

    def launch(self, user_id: int) -> str:
        if user_id not in self._launch:
            self._launch[user_id] = sign_launch_params(self.target.secret, user_id)
        return self._launch[user_id]


class SocketClient:
    """One user's WebSocket. Frames containing ``marker`` are kept with their receipt time.

    The message callback does as little as possible (a substring test and an
    append) because on this 2-core machine the client competes with the
    server for CPU; frames are parsed only after the run.
    """

    def __init__(self, users: Users, user_id: int, marker: str | None = None, on_frame: Callable[[], None] | None = None) -> None:
        self.users = users
        self.user_id = user_id
        self.marker = marker
        self.on_frame = on_frame
        self.frames: list[tuple[float, str]] = []
        self.conn: WebSocketClientConnection | None = None
        self.closed_by_server = False
        self.close_code: int | None = None
        self._connected: asyncio.Future[dict[str, Any]] | None = None
        self._closing = False

    async def connect(self, timeout: float = 30.0) -> dict[str, Any]:
        """Open the socket and wait for the server's ``connected`` frame."""
        self._connected = asyncio.get_running_loop().create_future()
        url = f"{self.users.target.ws_url_for(self.user_id)}?{self.users.launch(self.user_id)}&name=bench{self.user_id}"
        request = HTTPRequest(url, connect_timeout=timeout, request_timeout=timeout)
        self.conn = await websocket_connect(request, on_message_callback=self._on_message)
        frame = await asyncio.wait_for(self._connected, timeout)
        if frame.get("event") != "connected":
            raise ApiError(f"user {self.user_id}: first frame was {frame!r}, not connected")
        return frame

    def _on_message(self, message: str | bytes | None) -> None:
        if message is None:  # the connection is gone
            if not self._closing:
                self.closed_by_server = True
                self.close_code = self.conn.close_code if self.conn else None
            if self._connected is not None and not self._connected.done():
                self._connected.set_exception(ApiError(f"user {self.user_id}: socket closed before connected"))
            return
        if isinstance(message, bytes):
            message = message.decode()
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(json.loads(message))
            return
        if self.marker is not None and self.marker in message:
            self.frames.append((time.perf_counter(), message))
            if self.on_frame is not None:
                self.on_frame()

    def close(self) -> None:
        self._closing = True
        if self.conn is not None:
            self.conn.close()


class Api:
    """JSON calls to ``/v1`` as a given user."""

    def __init__(self, users: Users, max_clients: int, timeout: float = 30.0) -> None:
        self.users = users
        self.timeout = timeout
        # force_instance: our own pool size, not the shared per-loop client's 10.
        self.http = AsyncHTTPClient(force_instance=True, max_clients=max_clients)

    async def call(self, user_id: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": "VK " + self.users.launch(user_id)}
        payload = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body)
        response = await self.http.fetch(
            self.users.target.http_url_for(user_id) + path,
            method=method,
            headers=headers,
            body=payload,
            raise_error=False,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            data = json.loads(response.body) if response.body else {}
        except ValueError:
            data = {}
        if response.code != 200 or not isinstance(data, dict) or data.get("response") is not True:
            detail = data.get("error") if isinstance(data, dict) and data.get("error") else (response.body or b"")[:200]
            raise ApiError(f"{method} {path} as {user_id}: HTTP {response.code} {detail!r}")
        return data

    def close(self) -> None:
        self.http.close()


# --- delivery workloads (fanout, global) -------------------------------------


@dataclasses.dataclass
class DeliveryConfig:
    workload: str = "fanout"  # or "global"
    receivers: int = 50
    messages: int = 1000
    concurrency: int = 10
    senders: int = 0  # 0: min(concurrency, receivers)
    # Messages per second, open loop (0: as fast as C in flight allow). With a
    # rate, every target gets the same offered load, so latencies compare.
    rate: float = 0.0
    first_user: int = 1_000_000
    timeout: float = 300.0  # the whole workload, setup included
    connect_concurrency: int = 50


async def run_delivery(target: Target, config: DeliveryConfig) -> dict[str, Any]:
    """Run ``fanout`` or ``global``; return the measurements and check results."""
    users = Users(target)
    api = Api(users, max_clients=max(config.concurrency, config.connect_concurrency, 10))
    clients: list[SocketClient] = []
    state = _DeliveryState(config)
    try:
        return await asyncio.wait_for(_delivery(target, config, users, api, clients, state), config.timeout)
    except asyncio.TimeoutError:
        return state.failed(f"timed out after {config.timeout:g} s (during {state.phase})")
    except (ApiError, OSError) as error:
        return state.failed(f"{type(error).__name__}: {error} (during {state.phase})")
    finally:
        for client in clients:
            client.close()
        api.close()
        await asyncio.sleep(0.2)  # let the close frames go out before the next workload


class _DeliveryState:
    """What a delivery run has learned so far, so a timeout can still report it."""

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self.phase = "connect"
        self.received = 0
        self.expected = config.receivers * config.messages
        self.all_received = asyncio.Event()

    def count_frame(self) -> None:
        self.received += 1
        if self.received >= self.expected:
            self.all_received.set()

    def failed(self, error: str) -> dict[str, Any]:
        return {
            "workload": self.config.workload,
            "receivers": self.config.receivers,
            "messages": self.config.messages,
            "concurrency": self.config.concurrency,
            "rate": self.config.rate,
            "ok": False,
            "error": error,
            "deliveries": self.received,
            "expected_deliveries": self.expected,
        }


class ScheduledSends:
    """k numbered sends, on a schedule (``rate`` per second) or as fast as they go; what each took and got.

    Latency counts from when a message was due, so a server that falls
    behind the schedule is not flattered by it.
    """

    def __init__(self, k: int, marker: str, rate: float) -> None:
        self.marker = marker
        self.rate = rate
        self.start = [0.0] * k
        self.end = [0.0] * k
        self.ids: list[int | None] = [None] * k
        self.errors: list[str] = []
        self.schedule_start = time.perf_counter()

    async def send(self, api: Any, sender: int, seq: int, conversation_id: int) -> None:
        body: dict[str, Any] = {"text": f"{self.marker}{seq}"}
        if conversation_id:
            body["conversation_id"] = conversation_id
        if self.rate:
            due = self.schedule_start + seq / self.rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            self.start[seq] = due
        else:
            self.start[seq] = time.perf_counter()
        try:
            reply = await api.call(sender, "POST", "/v1/messages/send", body)
            self.ids[seq] = int(reply["id"])
        except (ApiError, OSError, KeyError, ValueError) as error:
            self.errors.append(f"seq {seq}: {error}")
        self.end[seq] = time.perf_counter()


async def _delivery(
    target: Target, config: DeliveryConfig, users: Users, api: Api, clients: list[SocketClient], state: _DeliveryState
) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    marker = f"bm{tag}:"  # in message texts only, so other events never match
    user_ids = list(range(config.first_user, config.first_user + config.receivers))
    clients.extend(SocketClient(users, uid, marker, state.count_frame) for uid in user_ids)

    # Connect every receiver before any HTTP call: the server answers 428 to
    # a user without an open socket.
    results = await gather_limited(config.connect_concurrency, (client.connect for client in clients))
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise ApiError(f"{len(errors)} of {len(clients)} sockets failed to connect, first: {errors[0]!r}")

    state.phase = "setup"
    conversation_id = 0
    if config.workload == "fanout":
        created = await api.call(user_ids[0], "POST", "/v1/conversations/new", {"name": f"bench {tag}"})
        conversation_id = int(created["conversation_id"])
        join_path = f"/v1/conversations/join/{conversation_id}"
        results = await gather_limited(10, (lambda uid=uid: api.call(uid, "GET", join_path) for uid in user_ids[1:]))
    elif config.workload == "global":
        results = await gather_limited(10, (lambda uid=uid: api.call(uid, "GET", "/v1/messages/get?chat=0") for uid in user_ids))
    else:
        raise ValueError(f"unknown delivery workload {config.workload!r}")
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise ApiError(f"{len(errors)} of {len(results)} setup calls failed, first: {errors[0]}")

    # Send K messages with C in flight. Senders are receivers too, so every
    # sender holds the open socket the server requires.
    state.phase = "send"
    k = config.messages
    sends = ScheduledSends(k, marker, config.rate)
    send_start, send_end, sent_ids, send_errors = sends.start, sends.end, sends.ids, sends.errors
    senders = user_ids[: config.senders or min(config.concurrency, len(user_ids))]
    sequence = iter(range(k))  # shared by all workers: each seq is sent once

    sends.schedule_start = time.perf_counter()

    async def worker(index: int) -> None:
        sender = senders[index % len(senders)]
        for seq in sequence:
            await sends.send(api, sender, seq, conversation_id)

    server_cpu_before = target.cpu_seconds()
    client_cpu_before = time.process_time()
    await asyncio.gather(*(worker(i) for i in range(config.concurrency)))
    sends_done = max(send_end) if k else time.perf_counter()

    # Wait for the last deliveries; whatever has not arrived by the workload
    # timeout is reported as missing.
    state.phase = "drain"
    expected_deliveries = config.receivers * sum(1 for i in sent_ids if i is not None)
    state.expected = expected_deliveries
    if state.received >= expected_deliveries:
        state.all_received.set()
    await state.all_received.wait()
    await asyncio.sleep(0.2)  # a short grace so duplicates, if any, are seen
    server_cpu = target.cpu_seconds()
    client_cpu = time.process_time() - client_cpu_before

    state.phase = "verify"
    result = verify_deliveries(config, clients, marker, conversation_id, send_start, send_end, sent_ids)
    result["send_errors"] = len(send_errors)
    if send_errors:
        result["ok"] = False
        result["first_send_errors"] = send_errors[:3]
    first_send = min(send_start) if k else 0.0
    send_window = sends_done - first_send
    result["send_seconds"] = round(send_window, 3)
    result["sends_per_s"] = round(k / send_window, 1) if send_window > 0 else None
    if server_cpu_before is not None and server_cpu is not None:
        result["server_cpu_s"] = round(server_cpu - server_cpu_before, 2)
    result["client_cpu_s"] = round(client_cpu, 2)
    return result


def verify_deliveries(
    config: DeliveryConfig,
    clients: list[SocketClient],
    marker: str,
    conversation_id: int,
    send_start: list[float],
    send_end: list[float],
    sent_ids: list[int | None],
) -> dict[str, Any]:
    """Parse what each receiver got and check exactly-once, ascending, same order."""
    k = len(sent_ids)
    sent = {seq for seq, message_id in enumerate(sent_ids) if message_id is not None}
    latencies: list[float] = []
    last_receipt = 0.0
    missing = duplicates = unexpected = out_of_order = wrong_id = wrong_conversation = 0
    reference_order: list[int] | None = None
    order_mismatch = 0
    closed = [c for c in clients if c.closed_by_server]

    for client in clients:
        seen: set[int] = set()
        order: list[int] = []
        for received_at, raw in client.frames:
            frame = json.loads(raw)
            data = frame.get("data") or {}
            text = data.get("message", "")
            if frame.get("event") != NEW_MESSAGE or not isinstance(text, str) or not text.startswith(marker):
                continue  # the marker appeared elsewhere; not one of our deliveries
            if data.get("conversation_id") != conversation_id:
                wrong_conversation += 1
            seq = int(text[len(marker):])
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq not in sent:
                unexpected += 1  # delivered although its send failed
                continue
            if data.get("id") != sent_ids[seq]:
                wrong_id += 1
            if order and data.get("id", 0) <= order[-1]:
                out_of_order += 1
            order.append(data.get("id", 0))
            latencies.append(received_at - send_start[seq])
            last_receipt = max(last_receipt, received_at)
        missing += len(sent - seen)
        if reference_order is None:
            reference_order = order
        elif order != reference_order:
            order_mismatch += 1

    checks = {
        "missing": missing,
        "duplicates": duplicates,
        "unexpected": unexpected,
        "out_of_order": out_of_order,
        "order_mismatch_receivers": order_mismatch,
        "wrong_id": wrong_id,
        "wrong_conversation": wrong_conversation,
        "sockets_closed_by_server": len(closed),
    }
    if closed:
        checks["close_codes"] = sorted({c.close_code for c in closed if c.close_code is not None})
    ok = all(value == 0 for key, value in checks.items() if key != "close_codes")
    first_send = min(send_start) if k else 0.0
    window = last_receipt - first_send
    delivered = len(latencies)
    http_latencies = [end - start for start, end in zip(send_start, send_end)]
    return {
        "workload": config.workload,
        "receivers": config.receivers,
        "messages": k,
        "concurrency": config.concurrency,
        "ok": ok,
        "checks": checks,
        "deliveries": delivered,
        "expected_deliveries": len(clients) * len(sent),
        "delivery_seconds": round(window, 3),
        "deliveries_per_s": round(delivered / window, 1) if window > 0 else None,
        "latency_ms": percentiles_ms(latencies),
        "http_latency_ms": percentiles_ms(http_latencies),
    }


# --- idle workload -------------------------------------------------------------


@dataclasses.dataclass
class IdleConfig:
    sockets: int = 2000
    procs: int = 1
    first_user: int = 3_000_000
    connect_concurrency: int = 100  # handshakes in flight per client process
    settle_seconds: float = 2.0  # after the last connect, before reading RSS
    timeout: float = 300.0


async def hold_sockets(target: Target, first_user: int, count: int, concurrency: int) -> tuple[list[SocketClient], int, str | None]:
    """Open ``count`` sockets of distinct users; return (clients, failures, first error)."""
    users = Users(target)
    clients = [SocketClient(users, uid) for uid in range(first_user, first_user + count)]
    results = await gather_limited(concurrency, (client.connect for client in clients))
    failures = [r for r in results if isinstance(r, BaseException)]
    opened = []
    for client, outcome in zip(clients, results):
        if isinstance(outcome, BaseException):
            client.close()  # a handshake may have completed without a connected frame
        else:
            opened.append(client)
    return opened, len(failures), (repr(failures[0]) if failures else None)


async def run_idle(target: Target, config: IdleConfig) -> dict[str, Any]:
    """Open N idle sockets and report the server's RSS growth per socket."""
    if target.pid is None:
        raise ValueError("the idle workload needs the server's pid to read its RSS")
    raise_nofile_limit()
    result: dict[str, Any] = {"workload": "idle", "sockets": config.sockets, "procs": config.procs, "ok": False}
    holders: list[asyncio.subprocess.Process] = []
    local: list[SocketClient] = []
    try:
        async with asyncio.timeout(config.timeout):
            # Warm up first so lazily created server state (imports, caches,
            # pools) is not charged to the measured sockets.
            warm, _, _ = await hold_sockets(target, config.first_user + config.sockets + 10, 20, 20)
            for client in warm:
                client.close()
            await asyncio.sleep(config.settle_seconds)
            rss_before = read_rss_kib(target.pid)
            started = time.perf_counter()
            if config.procs <= 1:
                local, failures, first_error = await hold_sockets(target, config.first_user, config.sockets, config.connect_concurrency)
                opened = len(local)
            else:
                opened, failures, first_error = await _spawn_holders(target, config, holders)
            connect_seconds = time.perf_counter() - started
            await asyncio.sleep(config.settle_seconds)
            rss_after = read_rss_kib(target.pid)
            dropped = sum(1 for c in local if c.closed_by_server)
            result.update(
                opened=opened,
                failed=failures,
                connect_seconds=round(connect_seconds, 2),
                connects_per_s=round(opened / connect_seconds, 1) if connect_seconds > 0 else None,
                rss_before_kib=rss_before,
                rss_after_kib=rss_after,
                rss_per_socket_kib=round((rss_after - rss_before) / opened, 2) if opened else None,
            )
            if first_error:
                result["first_error"] = first_error
            # Release and see how much the server gives back.
            for client in local:
                client.close()
            dropped += await _release_holders(holders)
            await asyncio.sleep(config.settle_seconds)
            result["rss_after_close_kib"] = read_rss_kib(target.pid)
            result["dropped_while_idle"] = dropped
            result["ok"] = failures == 0 and dropped == 0
    except TimeoutError:
        result["error"] = f"timed out after {config.timeout:g} s"
    finally:
        for client in local:
            client.close()
        for holder in holders:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()
    return result


async def _spawn_holders(target: Target, config: IdleConfig, holders: list[asyncio.subprocess.Process]) -> tuple[int, int, str | None]:
    """Split the sockets over ``procs`` child processes; wait until all report READY."""
    per_proc, extra = divmod(config.sockets, config.procs)
    first = config.first_user
    for index in range(config.procs):
        count = per_proc + (1 if index < extra else 0)
        holders.append(
            await asyncio.create_subprocess_exec(
                # "--opt=value" because a random secret may start with "-".
                sys.executable, "-m", "bench.loadgen", "idle-hold",
                f"--url={target.base_url}", f"--secret={target.secret}",
                "--first-user", str(first), "--count", str(count),
                "--concurrency", str(config.connect_concurrency), "--timeout", str(config.timeout),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                cwd=Path(__file__).resolve().parent.parent,  # so "-m bench.loadgen" resolves from any cwd
            )
        )  # fmt: skip
        first += count
    opened = failures = 0
    first_error = None
    for holder in holders:
        assert holder.stdout is not None
        line = (await holder.stdout.readline()).decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"socket holder process failed: {line!r}")
        report = json.loads(line[len("READY "):])
        opened += report["opened"]
        failures += report["failed"]
        first_error = first_error or report.get("first_error")
    return opened, failures, first_error


async def _release_holders(holders: list[asyncio.subprocess.Process]) -> int:
    """Tell holder processes to close their sockets; return how many the server dropped."""
    dropped = 0
    for holder in holders:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        line = (await holder.stdout.readline()).decode()
        if line.startswith("CLOSED "):
            dropped += json.loads(line[len("CLOSED "):])["dropped"]
        await holder.wait()
    return dropped


async def _idle_hold_main(args: argparse.Namespace) -> None:
    """Child process of a split idle run: open sockets, report, hold until stdin closes."""
    raise_nofile_limit()
    target = Target(args.url, args.secret)
    clients, failures, first_error = await hold_sockets(target, args.first_user, args.count, args.concurrency)
    print("READY " + json.dumps({"opened": len(clients), "failed": failures, "first_error": first_error}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(args.timeout):
            await loop.run_in_executor(None, sys.stdin.read)  # returns at EOF
    except TimeoutError:
        pass
    dropped = sum(1 for c in clients if c.closed_by_server)
    for client in clients:
        client.close()
    await asyncio.sleep(0.5)
    print("CLOSED " + json.dumps({"dropped": dropped}), flush=True)


# --- reconnect storm ------------------------------------------------------------


@dataclasses.dataclass
class StormConfig:
    sockets: int = 2000
    first_user: int = 4_000_000
    connect_concurrency: int = 200  # handshakes in flight, as a crowd of phones reconnecting
    timeout: float = 300.0
    # None: the sockets are dropped by the client (a network blip). Else the
    # server is restarted instead: this stops every server process and starts
    # it again on the same port, returning the new Target (new pids).
    restart: Callable[[], Awaitable[Target]] | None = None
    retry_delay: float = 0.05  # seconds between refused connects while the server restarts
    # A rolling restart (one process after the other, as behind nginx): a
    # client whose process refuses it tries the next one, as nginx's
    # next-upstream would; the figure is how long each user was without a socket.
    rolling: bool = False
    # Restart storms: one more user sends global messages through the
    # restart (reconnecting its own socket as it must), this many per second.
    sends_per_s: float = 0.0


async def _handshake(
    target: Target, users: Users, user_id: int, resume: str | None, ws_url: str | None = None
) -> tuple[float, dict[str, Any], Any]:
    """Open a socket (resuming if asked); its handshake seconds (to the first frame), first frame and connection."""
    query = users.launch(user_id)
    if resume:
        query += "&" + urllib.parse.urlencode({"resume": resume})
    started = time.perf_counter()
    request = HTTPRequest(f"{ws_url or target.ws_url_for(user_id)}?{query}", connect_timeout=60, request_timeout=60)
    conn = await websocket_connect(request)
    message = await conn.read_message()
    if message is None:
        raise ApiError(f"user {user_id}: closed before its first frame")
    return time.perf_counter() - started, json.loads(message), conn


async def _handshake_retrying(
    target: Target, users: Users, user_id: int, resume: str | None, delay: float, old: Any,
    in_flight: asyncio.Semaphore, gaps: list[float], rolling: bool = False,
) -> tuple[float, dict[str, Any], Any]:
    """Wait for the server to close ``old`` (as a phone notices its socket is gone), then
    _handshake (``in_flight`` bounds those at once), retried while the server is down
    (refused, or 503 during its shutdown).

    The handshake time is that of the attempt that succeeded; ``gaps`` gets
    the time from the close to the new first frame. ``rolling``: each retry
    goes to the next process, as nginx sends a refused connection on.
    """
    while await old.read_message() is not None:
        pass
    closed = time.perf_counter()
    deadline = closed + 120.0
    urls = [target.ws_url_for(user_id + n) for n in range(len(target.urls))]  # its own process first
    attempt = 0
    async with in_flight:
        while True:
            ws_url = urls[attempt % len(urls)] if rolling else None
            attempt += 1
            try:
                outcome = await _handshake(target, users, user_id, resume, ws_url)
            except (OSError, ApiError, HTTPClientError):
                if time.perf_counter() > deadline:
                    raise
                if not rolling or attempt % len(urls) == 0:
                    await asyncio.sleep(delay * (0.5 + random.random()))
                continue
            gaps.append(time.perf_counter() - closed)
            return outcome


async def _send_through(target: Target, users: Users, user_id: int, per_s: float, stop: asyncio.Event) -> collections.Counter:
    """Send global messages as ``user_id`` until ``stop``, its socket reopened whenever it closes;
    the outcomes by HTTP status (0: no answer)."""
    outcomes: collections.Counter = collections.Counter()
    api = Api(users, max_clients=4, timeout=10)
    socket: SocketClient | None = None
    n = 0
    while not stop.is_set():
        if socket is None or socket.closed_by_server:
            socket = SocketClient(users, user_id)
            try:
                await socket.connect(timeout=10)
            except Exception:  # noqa: BLE001 - refused while its process restarts: try again
                socket = None
                await asyncio.sleep(0.05)
                continue
        n += 1
        try:
            await api.call(user_id, "POST", "/v1/messages/send", {"text": f"through the restart {n}"})
            outcomes[200] += 1
        except ApiError as error:
            status = str(error).split("HTTP ", 1)[1].split(" ", 1)[0] if "HTTP " in str(error) else "0"
            outcomes[int(status) if status.isdigit() else 0] += 1
        except Exception:  # noqa: BLE001
            outcomes[0] += 1
        await asyncio.sleep(1 / per_s)
    if socket is not None:
        socket.close()
    return outcomes


async def run_storm(target: Target, config: StormConfig) -> dict[str, Any]:
    """N sockets connected, all dropped at once, all reconnecting with resume= at once.

    Reports the time from the drop until the last socket has its first frame
    back (``resumed``, or ``resume_failed``/``connected`` for a server that
    cannot resume), the handshakes per second of that storm and their latency.
    """
    users = Users(target)
    user_ids = list(range(config.first_user, config.first_user + config.sockets))
    setup_retries: list[str] = []

    async def first_connect(uid: int) -> tuple[float, dict[str, Any], Any]:
        # Setup, not measured: a handshake refused with 503, or closed before
        # its greeting (the storage's 5 s deadline passed under this burst of
        # new users), is retried twice, and counted.
        for attempt in range(3):
            try:
                return await _handshake(target, users, uid, None)
            except (HTTPClientError, ApiError) as error:
                if (isinstance(error, HTTPClientError) and error.code != 503) or attempt == 2:
                    raise
                setup_retries.append(f"{type(error).__name__}: {error}")
                await asyncio.sleep(0.5)
        raise AssertionError("unreachable")

    first = await gather_limited(config.connect_concurrency, (lambda uid=uid: first_connect(uid) for uid in user_ids))
    setup_ms = percentiles_ms([outcome[0] for outcome in first if not isinstance(outcome, BaseException)])
    failures = [r for r in first if isinstance(r, BaseException)]
    if failures:
        for outcome in first:
            if not isinstance(outcome, BaseException):
                outcome[2].close()
        return {"ok": False, "error": f"{len(failures)} of {len(user_ids)} first connects failed: {failures[0]!r}"}
    positions = {uid: outcome[1].get("pos") for uid, outcome in zip(user_ids, first)}
    restart_seconds = None
    gaps: list[float] = []  # restart: each user's time without a socket
    sends_during: dict[int, int] | None = None  # restart with sends_per_s: their outcomes by status
    if config.restart is None:
        for outcome in first:
            outcome[2].close()  # the network blip: every socket gone at once
        await asyncio.sleep(0.5)  # the server notices the closes
        cpu_before = target.cpu_seconds()
        started = time.perf_counter()
        second = await gather_limited(config.connect_concurrency,
                                      (lambda uid=uid: _handshake(target, users, uid, positions[uid]) for uid in user_ids))
    else:
        # A deploy: the clock starts when the server is told to stop; every
        # client retries (refused while it is down) until its handshake answers.
        stop_sending = asyncio.Event()
        sending = (asyncio.ensure_future(_send_through(target, users, config.first_user + config.sockets,
                                                        config.sends_per_s, stop_sending))
                   if config.sends_per_s else None)
        started = time.perf_counter()
        restarting = asyncio.ensure_future(config.restart())
        # Every client notices its close at once (a phone does not queue for
        # that); the handshakes that follow are connect_concurrency at most.
        in_flight = asyncio.Semaphore(config.connect_concurrency)
        second = await asyncio.gather(
            *(_handshake_retrying(target, users, uid, positions[uid], config.retry_delay, outcome[2], in_flight, gaps,
                                  config.rolling) for uid, outcome in zip(user_ids, first)),
            return_exceptions=True,
        )  # fmt: skip
        target = await restarting
        restart_seconds = getattr(config.restart, "seconds", None)
        if sending is not None:
            stop_sending.set()
            sends_during = dict(await sending)
        cpu_before = 0.0  # the new processes' whole life: start-up included
        for outcome in first:
            outcome[2].close()
    elapsed = time.perf_counter() - started
    cpu = target.cpu_seconds()
    failures = [r for r in second if isinstance(r, BaseException)]
    outcomes = [r for r in second if not isinstance(r, BaseException)]
    events = collections.Counter(frame.get("event") for _, frame, _ in outcomes)
    for _, _, conn in outcomes:
        conn.close()
    result: dict[str, Any] = {
        "ok": not failures,
        "sockets": len(user_ids),
        "storm_seconds": round(elapsed, 3),
        "handshakes_per_s": round(len(outcomes) / elapsed, 1) if elapsed > 0 else None,
        "handshake_ms": percentiles_ms([seconds for seconds, _, _ in outcomes]),
        "first_frames": dict(events),
        "resume_failed_reasons": dict(collections.Counter(
            frame.get("data", {}).get("reason") for _, frame, _ in outcomes if frame.get("event") == "resume_failed"
        )),
        "failures": len(failures),
        "drop": "restart" if config.restart is not None else "client",
        "setup_retries": len(setup_retries),
        # The burst of first-time users the setup is (connect_concurrency in flight): their handshakes.
        "setup_handshake_ms": setup_ms,
    }
    if gaps:
        result["without_socket_ms"] = percentiles_ms(gaps)
    if sends_during is not None:
        result["sends_during_restart"] = sends_during
    if config.rolling:
        result["drop"] = "rolling restart"
    if restart_seconds is not None:
        # SIGTERM until the new processes listen; the rest is the storm proper.
        result["restart_seconds"] = restart_seconds
        after = elapsed - restart_seconds
        result["after_listen_seconds"] = round(after, 3)
        # handshakes/s counts from when the new processes listen: the server's
        # rate, comparable with the baseline's; storm_seconds counts from SIGTERM.
        result["handshakes_per_s_overall"] = result["handshakes_per_s"]
        result["handshakes_per_s"] = round(len(outcomes) / after, 1) if after > 0 else None
    if failures:
        result["first_failure"] = repr(failures[0])
    if cpu_before is not None and cpu is not None:
        result["server_cpu_s"] = round(cpu - cpu_before, 2)
        result["server_cpu_ms_per_handshake"] = round((cpu - cpu_before) * 1000 / max(1, len(outcomes)), 2)
    return result


# --- several processes, each with its own audiences (nproc) ----------------------


# Kinds of log entries as the server's /metrics labels them (chat_log_entries_*_total).
LOG_ENTRY_KINDS = ("conversation", "global", "all", "viewers", "other")


@dataclasses.dataclass
class NprocConfig:
    # Groups of users, each in one conversation of its own; group g's sockets
    # and HTTP calls go to process g mod P. With as many groups as processes,
    # every process's sockets are in conversations of their own (disjoint
    # audiences), and one process runs the very same groups for comparison.
    groups: int = 4
    sockets_per_group: int = 25
    # Every socket also listens to the global chat; this share of the messages goes there.
    global_share: float = 0.1
    messages: int = 1000
    concurrency: int = 10
    rate: float = 0.0  # messages/s over all groups, open loop (0: as fast as C allows)
    first_user: int = 6_000_000
    timeout: float = 300.0
    connect_concurrency: int = 50
    settle_seconds: float = 1.0  # after the setup, so its log entries are applied before the first reading


def is_global_message(seq: int, share: float) -> bool:
    """Whether message ``seq`` goes to the global chat: evenly spread, ``share`` of them."""
    return math.floor((seq + 1) * share) > math.floor(seq * share)


async def scrape_log_counters(http: AsyncHTTPClient, base_url: str, token: str | None) -> dict[str, Any] | None:
    """The log and frame counters of one server process's /metrics (on its API port, with the token);
    None if it has none (no token, or a server from before these metrics)."""
    if not token:
        return None
    response = await http.fetch(base_url + "/metrics", headers={"Authorization": f"Bearer {token}"}, raise_error=False)
    if response.code != 200:
        return None
    from prometheus_client.parser import text_string_to_metric_families  # the server's own dependency

    read = dict.fromkeys(LOG_ENTRY_KINDS, 0.0)
    delivered = dict.fromkeys(LOG_ENTRY_KINDS, 0.0)
    frames = 0.0
    found = False
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            if sample.name == "chat_log_entries_read_total":
                read[sample.labels.get("kind", "other")] = sample.value
                found = True
            elif sample.name == "chat_log_entries_delivered_total":
                delivered[sample.labels.get("kind", "other")] = sample.value
            elif sample.name == "chat_events_delivered_total":
                frames = sample.value
    return {"read": read, "delivered": delivered, "frames": frames} if found else None


def _counters_moved(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    return {
        "entries_read": {k: round(after["read"][k] - before["read"][k]) for k in LOG_ENTRY_KINDS},
        "entries_delivered": {k: round(after["delivered"][k] - before["delivered"][k]) for k in LOG_ENTRY_KINDS},
        "frames_sent": round(after["frames"] - before["frames"]),
    }


def read_per_delivered(moved: dict[str, Any]) -> dict[str, float | None]:
    """Entries read ÷ entries delivered on one process: conversation messages, global ones, every kind."""
    read, delivered = moved["entries_read"], moved["entries_delivered"]
    ratios: dict[str, float | None] = {}
    for name, kinds in (("conversation", ("conversation",)), ("global", ("global",)), ("all_kinds", LOG_ENTRY_KINDS)):
        r, d = sum(read[k] for k in kinds), sum(delivered[k] for k in kinds)
        ratios[name] = round(r / d, 2) if d else None
    return ratios


async def run_nproc(target: Target, config: NprocConfig, observer: Target | None = None) -> dict[str, Any]:
    """Groups of users in conversations of their own, each group on one process, all in the global chat.

    Reports, per process: deliveries, CPU, and the log entries it read
    against those it delivered (from its /metrics before and after the send
    phase). ``observer``, a further process of the same chat holding no
    socket, measures what reading and decoding an entry costs alone.
    """
    http = AsyncHTTPClient(force_instance=True, max_clients=10)
    processes = len(target.urls)
    # One client per process: a user's socket and HTTP calls go to its group's process.
    homes = [Target(url, target.secret, pid) for url, pid in zip(target.urls, (target.pid, *target.more_pids))]
    apis = [Api(Users(home), max_clients=max(config.concurrency, config.connect_concurrency, 10)) for home in homes]
    groups = [list(range(config.first_user + g * config.sockets_per_group,
                         config.first_user + (g + 1) * config.sockets_per_group)) for g in range(config.groups)]
    home_of = {uid: g % processes for g, members in enumerate(groups) for uid in members}
    state = _DeliveryState(DeliveryConfig(workload="nproc", receivers=sum(map(len, groups)), messages=config.messages,
                                          concurrency=config.concurrency, rate=config.rate))
    clients: list[SocketClient] = []
    try:
        result = await asyncio.wait_for(
            _nproc(target, config, observer, http, apis, groups, home_of, clients, state), config.timeout
        )
    except asyncio.TimeoutError:
        result = state.failed(f"timed out after {config.timeout:g} s (during {state.phase})")
    except (ApiError, OSError) as error:
        result = state.failed(f"{type(error).__name__}: {error} (during {state.phase})")
    finally:
        for client in clients:
            client.close()
        for api in apis:
            api.close()
        http.close()
        await asyncio.sleep(0.2)
    result.update(processes=processes, groups=config.groups, sockets_per_group=config.sockets_per_group,
                  global_share=config.global_share)
    return result


async def _nproc(
    target: Target, config: NprocConfig, observer: Target | None, http: AsyncHTTPClient, apis: list[Api],
    groups: list[list[int]], home_of: dict[int, int], clients: list[SocketClient], state: _DeliveryState,
) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    marker = f"bm{tag}:"
    processes = len(apis)
    user_ids = [uid for members in groups for uid in members]
    clients.extend(SocketClient(apis[home_of[uid]].users, uid, marker, state.count_frame) for uid in user_ids)
    results = await gather_limited(config.connect_concurrency, (client.connect for client in clients))
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise ApiError(f"{len(errors)} of {len(clients)} sockets failed to connect, first: {errors[0]!r}")

    state.phase = "setup"
    conversation_of_group = []
    for g, members in enumerate(groups):
        api = apis[g % processes]
        created = await api.call(members[0], "POST", "/v1/conversations/new", {"name": f"bench {tag} group {g}"})
        conversation_of_group.append(int(created["conversation_id"]))
    join_calls = [lambda uid=uid, g=g: apis[home_of[uid]].call(uid, "GET", f"/v1/conversations/join/{conversation_of_group[g]}")
                  for g, members in enumerate(groups) for uid in members[1:]]
    listen_calls = [lambda uid=uid: apis[home_of[uid]].call(uid, "GET", "/v1/messages/get?chat=0") for uid in user_ids]
    results = await gather_limited(10, join_calls + listen_calls)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise ApiError(f"{len(errors)} of {len(results)} setup calls failed, first: {errors[0]}")
    await asyncio.sleep(config.settle_seconds)  # every process applies the joins and subscriptions first

    # Message seq: its group (round robin, so every process gets the same
    # load), the global chat or the group's conversation, one of the group's
    # senders (enough of them for every send in flight to be a distinct user).
    k = config.messages
    senders_per_group = max(1, min(config.sockets_per_group, math.ceil(config.concurrency / config.groups)))
    plan = []
    for seq in range(k):
        g, nth = seq % config.groups, seq // config.groups  # the group's nth message
        sender = groups[g][nth % senders_per_group]
        # The share counted within each group's messages, so every process sends as many to the global chat.
        plan.append((sender, 0 if is_global_message(nth, config.global_share) else conversation_of_group[g], g))

    state.phase = "send"
    sends = ScheduledSends(k, marker, config.rate)
    send_start, send_end, sent_ids, send_errors = sends.start, sends.end, sends.ids, sends.errors
    sequence = iter(range(k))
    pids = (target.pid, *target.more_pids)
    counters_before = [await scrape_log_counters(http, url, target.metrics_token) for url in target.urls]
    observer_before = await scrape_log_counters(http, observer.base_url, target.metrics_token) if observer else None
    cpu_before = [read_cpu_seconds(pid) for pid in pids]
    observer_cpu_before = read_cpu_seconds(observer.pid) if observer else None
    sends.schedule_start = time.perf_counter()

    async def worker() -> None:
        for seq in sequence:
            sender, conversation_id, _ = plan[seq]
            await sends.send(apis[home_of[sender]], sender, seq, conversation_id)

    await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    sends_done = max(send_end) if k else time.perf_counter()

    state.phase = "drain"
    all_sockets = len(user_ids)
    state.expected = sum(all_sockets if plan[seq][1] == 0 else len(groups[plan[seq][2]])
                         for seq in range(k) if sent_ids[seq] is not None)
    if state.received >= state.expected:
        state.all_received.set()
    await state.all_received.wait()
    await asyncio.sleep(0.2)  # a short grace so duplicates, if any, are seen
    cpu_after = [read_cpu_seconds(pid) for pid in pids]
    observer_cpu_after = read_cpu_seconds(observer.pid) if observer else None
    counters_after = [await scrape_log_counters(http, url, target.metrics_token) for url in target.urls]
    observer_after = await scrape_log_counters(http, observer.base_url, target.metrics_token) if observer else None

    state.phase = "verify"
    result, delivered_to = verify_nproc_deliveries(clients, marker, plan, groups, send_start, sent_ids)
    result["send_errors"] = len(send_errors)
    if send_errors:
        result["ok"] = False
        result["first_send_errors"] = send_errors[:3]
    first_send = min(send_start) if k else 0.0
    send_window = sends_done - first_send
    result["messages"] = k
    result["concurrency"] = config.concurrency
    result["rate"] = config.rate
    result["send_seconds"] = round(send_window, 3)
    result["sends_per_s"] = round(k / send_window, 1) if send_window > 0 else None
    window = result["delivery_seconds"]

    per_process = []
    delivered_by_process: collections.Counter[int] = collections.Counter()
    for uid, count in delivered_to.items():
        delivered_by_process[home_of[uid]] += count
    for p in range(processes):
        row: dict[str, Any] = {"process": p, "sockets": sum(1 for uid in user_ids if home_of[uid] == p),
                               "deliveries": delivered_by_process[p]}
        row["deliveries_per_s"] = round(row["deliveries"] / window, 1) if window > 0 else None
        if cpu_before[p] is not None and cpu_after[p] is not None:
            row["cpu_s"] = round(cpu_after[p] - cpu_before[p], 2)
            if row["deliveries"]:
                row["cpu_us_per_delivery"] = round(row["cpu_s"] * 1e6 / row["deliveries"], 1)
        moved = _counters_moved(counters_before[p], counters_after[p])
        if moved is not None:
            row.update(moved)
            row["read_per_delivered"] = read_per_delivered(moved)
        per_process.append(row)
    result["per_process"] = per_process
    if all("cpu_s" in row for row in per_process):
        result["server_cpu_s"] = round(sum(row["cpu_s"] for row in per_process), 2)
    ratios = [row["read_per_delivered"] for row in per_process if "read_per_delivered" in row]
    if ratios:
        # The table's figure: the mean over processes (the JSON has each).
        result["read_per_delivered"] = {
            name: round(statistics.mean(values), 2) if (values := [r[name] for r in ratios if r[name] is not None]) else None
            for name in ("conversation", "global", "all_kinds")
        }
    if observer is not None:
        seen: dict[str, Any] = {"cpu_s": None}
        if observer_cpu_before is not None and observer_cpu_after is not None:
            seen["cpu_s"] = round(observer_cpu_after - observer_cpu_before, 2)
        moved = _counters_moved(observer_before, observer_after)
        if moved is not None:
            seen.update(moved)
            read = sum(moved["entries_read"].values())
            if read and seen["cpu_s"] is not None:
                # A process with no audience at all: what reading and decoding an entry costs by itself.
                seen["cpu_us_per_entry_read"] = round(seen["cpu_s"] * 1e6 / read, 1)
        result["observer"] = seen
    return result


def verify_nproc_deliveries(
    clients: list[SocketClient], marker: str, plan: list[tuple[int, int, int]], groups: list[list[int]],
    send_start: list[float], sent_ids: list[int | None],
) -> tuple[dict[str, Any], collections.Counter[int]]:
    """Every socket got its group's conversation messages and every global one, exactly once, each
    chat's in ascending id order and in the same order as every other socket of that chat; nothing else.
    Return the checks and figures, and the deliveries per user."""
    group_of = {uid: g for g, members in enumerate(groups) for uid in members}
    sent = {seq for seq, message_id in enumerate(sent_ids) if message_id is not None}
    latencies: list[float] = []
    last_receipt = 0.0
    missing = duplicates = unexpected = out_of_order = wrong_id = wrong_conversation = order_mismatch = 0
    reference: dict[int, list[int]] = {}  # chat → the order its first receiver saw
    delivered_to: collections.Counter[int] = collections.Counter()
    for client in clients:
        group = group_of[client.user_id]
        expected = {seq for seq in sent if plan[seq][1] == 0 or plan[seq][2] == group}
        seen: set[int] = set()
        orders: dict[int, list[int]] = collections.defaultdict(list)
        for received_at, raw in client.frames:
            frame = json.loads(raw)
            data = frame.get("data") or {}
            text = data.get("message", "")
            if frame.get("event") != NEW_MESSAGE or not isinstance(text, str) or not text.startswith(marker):
                continue
            seq = int(text[len(marker):])
            if seq in seen:
                duplicates += 1
                continue
            seen.add(seq)
            if seq not in expected:
                unexpected += 1  # another group's conversation, or a failed send
                continue
            chat = plan[seq][1]
            if data.get("conversation_id") != chat:
                wrong_conversation += 1
            if data.get("id") != sent_ids[seq]:
                wrong_id += 1
            order = orders[chat]
            if order and data.get("id", 0) <= order[-1]:
                out_of_order += 1
            order.append(data.get("id", 0))
            latencies.append(received_at - send_start[seq])
            last_receipt = max(last_receipt, received_at)
            delivered_to[client.user_id] += 1
        missing += len(expected - seen)
        for chat, order in orders.items():
            if reference.setdefault(chat, order) != order:
                order_mismatch += 1
    closed = [c for c in clients if c.closed_by_server]
    checks = {
        "missing": missing, "duplicates": duplicates, "unexpected": unexpected, "out_of_order": out_of_order,
        "order_mismatch_receivers": order_mismatch, "wrong_id": wrong_id, "wrong_conversation": wrong_conversation,
        "sockets_closed_by_server": len(closed),
    }  # fmt: skip
    if closed:
        checks["close_codes"] = sorted({c.close_code for c in closed if c.close_code is not None})
    first_send = min(send_start) if send_start else 0.0
    window = last_receipt - first_send
    return {
        "workload": "nproc",
        "receivers": len(clients),
        "ok": all(value == 0 for key, value in checks.items() if key != "close_codes"),
        "checks": checks,
        "deliveries": len(latencies),
        "delivery_seconds": round(window, 3),
        "deliveries_per_s": round(len(latencies) / window, 1) if window > 0 else None,
        "latency_ms": percentiles_ms(latencies),
    }, delivered_to


# --- command line ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat server load generator (loopback only).")
    sub = parser.add_subparsers(dest="workload", required=True)
    for name in ("fanout", "global"):
        p = sub.add_parser(name, help=f"{name} delivery workload")
        p.add_argument("-R", "--receivers", type=int, default=50)
        p.add_argument("--rate", type=float, default=0.0, help="messages/s, open loop (0: as fast as C allows)")
        p.add_argument("-K", "--messages", type=int, default=1000)
        p.add_argument("-C", "--concurrency", type=int, default=10)
        p.add_argument("--senders", type=int, default=0, help="distinct sending users (default: min(C, R))")
        p.add_argument("--first-user", type=int, default=1_000_000 if name == "fanout" else 2_000_000)
    idle = sub.add_parser("idle", help="idle sockets, server RSS per socket")
    idle.add_argument("-N", "--sockets", type=int, default=2000)
    idle.add_argument("--procs", type=int, default=1)
    idle.add_argument("--first-user", type=int, default=3_000_000)
    storm = sub.add_parser("storm", help="everyone reconnects with resume= at once")
    storm.add_argument("-N", "--sockets", type=int, default=2000)
    storm.add_argument("--first-user", type=int, default=4_000_000)
    hold = sub.add_parser("idle-hold", help=argparse.SUPPRESS)  # internal: child of a split idle run
    hold.add_argument("--first-user", type=int, required=True)
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--concurrency", type=int, default=100)
    for p in sub.choices.values():
        p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080 (loopback only)")
        p.add_argument("--secret", required=True, help="the server's CHAT_VK_SECRET")
        p.add_argument("--pid", type=int, help="server pid, for RSS/CPU readings")
        p.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole workload")
    return parser


def check_loopback(url: str) -> None:
    """Refuse any target that is not on this machine's loopback interface."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit(f"refusing non-loopback target {url!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_loopback(args.url)
    if args.workload == "idle-hold":
        asyncio.run(_idle_hold_main(args))
        return 0
    target = Target(args.url.rstrip("/"), args.secret, args.pid)
    if args.workload == "storm":
        raise_nofile_limit()
        result = asyncio.run(run_storm(target, StormConfig(sockets=args.sockets, first_user=args.first_user,
                                                           timeout=args.timeout)))
    elif args.workload == "idle":
        config = IdleConfig(sockets=args.sockets, procs=args.procs, first_user=args.first_user, timeout=args.timeout)
        result = asyncio.run(run_idle(target, config))
    else:
        delivery = DeliveryConfig(
            workload=args.workload, receivers=args.receivers, messages=args.messages,
            concurrency=args.concurrency, senders=args.senders, rate=args.rate, first_user=args.first_user,
            timeout=args.timeout,
        )  # fmt: skip
        raise_nofile_limit()
        result = asyncio.run(run_delivery(target, delivery))
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
