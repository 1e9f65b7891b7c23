"""Benchmark runner: the same workloads against the baseline and our server, in one run.

    python -m bench.run                      # all targets, default sizes
    python -m bench.run --smoke              # seconds; exit status 1 if a delivery check fails
    python -m bench.run --targets baseline,embedded --workloads fanout -R 200 -K 2000

Targets (each started here as a subprocess on a free loopback port):

- ``baseline``: ``bench/baseline_server.py``, a bare Tornado broadcast server;
- ``embedded``: our ``run.py`` with SQLite and the in-process cache;
- ``mariadb``: our ``run.py`` with MariaDB + Redis (a throwaway database and a
  unique Redis key prefix, both removed afterwards);
- ``mariadb-2p``, ``mariadb-np``: two, or ``--procs``, such processes as one chat;
- ``name@rev=COMMIT``: that target with the server of another revision, from a
  git worktree made for the run (``mariadb,mariadb@rev=6e915a3`` side by side).

Every workload gets a fresh server process: RSS readings then start from a
clean heap instead of memory a previous workload freed and left in the
allocator. Results go to ``bench/results/`` as JSON and Markdown (not in
``--smoke``, which only prints). Tests call :func:`main` with an argv list;
it returns the exit status instead of exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib.machinery
import importlib.util
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

if __package__ in (None, ""):  # run as ``python bench/run.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.launch import self_check  # noqa: E402
from server.eventloop import EVENT_LOOPS  # noqa: E402
from bench.loadgen import (  # noqa: E402
    DeliveryConfig, IdleConfig, NprocConfig, StormConfig, Target, raise_nofile_limit, run_delivery, run_idle,
    run_nproc, run_storm,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
ALL_TARGETS = ("baseline", "embedded", "mariadb", "mariadb-2p", "mariadb-np")
DEFAULT_TARGETS = ("baseline", "embedded", "mariadb", "mariadb-2p")
# Targets run as several processes of one chat (same database and Redis prefix)
# → the one-process target each is compared with.
MULTI_PROCESS_TARGETS = {"mariadb-2p": "mariadb", "mariadb-np": "mariadb"}
ALL_WORKLOADS = ("fanout", "global", "idle", "storm", "storm-restart", "storm-rolling", "nproc")
DEFAULT_WORKLOADS = ("fanout", "global", "idle", "storm", "storm-restart")
# The workloads a closed-loop run repeats on one process at the rate several processes reached.
EQUAL_LOAD_WORKLOADS = ("fanout", "global", "nproc")
READY_TIMEOUT = 60.0  # seconds for a server to start listening (migrations included)

# User id ranges per workload, far apart, so workloads never share users even
# when they run against one database.
FIRST_USER = {"fanout": 1_000_000, "global": 2_000_000, "idle": 3_000_000, "storm": 4_000_000, "storm-restart": 5_000_000,
              "nproc": 6_000_000, "storm-rolling": 7_000_000}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- starting and stopping servers ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _raise_nofile_in_child() -> None:
    """preexec_fn for servers: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclasses.dataclass
class ServerSpec:
    """How to start one target: argv and the CHAT_* environment."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path = REPO  # another revision's checkout for ``name@rev=COMMIT``


class ServerProcess:
    """A target server running as a child process, logging to a file."""

    def __init__(self, spec: ServerSpec, log_path: Path) -> None:
        self.spec = spec
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # Inherit nothing CHAT_*-shaped from the caller: the spec is the whole config.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update(self.spec.env)
        # Metrics on a port of the system's choosing: runs side by side must not meet on the default one.
        env.update(CHAT_HOST="127.0.0.1", CHAT_PORT=str(self.port), CHAT_METRICS_ADDR="127.0.0.1:0", PYTHONUNBUFFERED="1")
        argv = [a.replace("{port}", str(self.port)) for a in self.spec.argv]
        with open(self.log_path, "ab") as log_file:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                argv, cwd=self.spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, preexec_fn=_raise_nofile_in_child,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode} at start; see {self.log_path}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} did not listen within {READY_TIMEOUT:g} s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self.proc.kill()
        self.proc.wait()


# --- per-target resources (temp dirs, MariaDB database, Redis prefix) ----------------


@dataclasses.dataclass(frozen=True)
class TargetName:
    """A target as named on the command line: ``mariadb``, ``mariadb@asyncio``, ``mariadb@rev=6e915a3``."""

    base: str
    event_loop: str = ""  # "" = the server's default
    rev: str = ""  # "" = this checkout

    @classmethod
    def parse(cls, name: str) -> "TargetName":
        """ValueError if a suffix is neither an event loop nor ``rev=COMMIT``."""
        base, *suffixes = name.split("@")
        event_loop = rev = ""
        for suffix in suffixes:
            if suffix.startswith("rev=") and len(suffix) > 4:
                rev = suffix[4:]
            elif suffix in EVENT_LOOPS:
                event_loop = suffix
            else:
                raise ValueError(f"unknown suffix @{suffix} in target {name!r}")
        return cls(base, event_loop, rev)

    def with_base(self, base: str) -> str:
        """The name of another base target with the same suffixes (its counterpart)."""
        return base + (f"@{self.event_loop}" if self.event_loop else "") + (f"@rev={self.rev}" if self.rev else "")

    @property
    def current(self) -> str:
        """The same target from this checkout: what a ``@rev=`` row is compared with."""
        return self.base + (f"@{self.event_loop}" if self.event_loop else "")


def server_processes(name: str, args: argparse.Namespace) -> int:
    """How many processes of one chat a target runs."""
    base = TargetName.parse(name).base
    return args.procs if base == "mariadb-np" else 2 if base == "mariadb-2p" else 1


# --- another revision's server, from a git worktree --------------------------------


def _git(*argv: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


@contextlib.contextmanager
def revision_checkouts(revs: list[str]) -> Iterator[dict[str, tuple[Path, str]]]:
    """A detached git worktree of each revision, for the run: rev → (its folder, its full commit).

    The server of that revision runs from there, with this checkout's
    virtualenv and bench client; the worktrees are removed afterwards.
    """
    made: dict[str, tuple[Path, str]] = {}
    folders: list[Path] = []
    try:
        for rev in revs:
            commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
            parent = Path(tempfile.mkdtemp(prefix=f"chatbench-rev-{rev}-"))
            folders.append(parent)
            checkout = parent / "checkout"
            _git("worktree", "add", "--detach", str(checkout), commit)
            if not (checkout / "run.py").exists():
                raise RuntimeError(f"revision {rev} has no run.py")
            made[rev] = (checkout, commit)
        yield made
    finally:
        for checkout, _ in made.values():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _git("worktree", "remove", "--force", str(checkout))
        for parent in folders:
            shutil.rmtree(parent, ignore_errors=True)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _git("worktree", "prune")


@contextlib.contextmanager
def provision(name: str, run_id: str, args: argparse.Namespace, max_members: int) -> Iterator[ServerSpec]:
    """Yield a target's start spec; remove whatever it created afterwards."""
    python = sys.executable
    parsed = TargetName.parse(name)
    name, event_loop = parsed.base, parsed.event_loop
    loop_env = {"CHAT_EVENT_LOOP": event_loop} if event_loop else {}
    cwd = args.checkouts[parsed.rev][0] if parsed.rev else REPO
    if name == "baseline":
        yield ServerSpec(name, [python, str(cwd / "bench" / "baseline_server.py"), "--port", "{port}"], loop_env, cwd)
        return
    data_dir = tempfile.mkdtemp(prefix=f"chatbench-{name}-")
    env = {
        "CHAT_VK_SECRET": args.secret, "CHAT_DATA_DIR": data_dir, "CHAT_MAX_MEMBERS": str(max_members),
        # Each sending user sends far faster than a person: flood control off.
        "CHAT_SEND_RATE_LIMIT": "0",
        # /metrics on each process's API port too, for the nproc workload's readings.
        "CHAT_METRICS_TOKEN": args.metrics_token,
        **loop_env,
    }
    try:
        if name == "embedded":
            yield ServerSpec(name, [python, "run.py"], env, cwd)
        elif name in ("mariadb", *MULTI_PROCESS_TARGETS):
            tag = name.replace("-", "") + (f"_{parsed.rev}" if parsed.rev else "")
            database = f"chatbench_{run_id}_{tag}"
            prefix = f"chatbench:{run_id}:{tag}:"
            _mysql_execute(args.mysql_url, f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
            try:
                env.update(
                    CHAT_DATABASE_URL=f"{args.mysql_url.rstrip('/')}/{database}",
                    CHAT_REDIS_URL=args.redis_url,
                    CHAT_REDIS_PREFIX=prefix,
                )
                yield ServerSpec(name, [python, "run.py"], env, cwd)
            finally:
                _mysql_execute(args.mysql_url, f"DROP DATABASE IF EXISTS `{database}`")
                _redis_delete_prefix(args.redis_url, prefix)
        else:
            raise ValueError(f"unknown target {name!r}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _mysql_execute(url: str, statement: str) -> None:
    """Run one statement as the URL's user (PyMySQL, which aiomysql already brings)."""
    import pymysql

    parts = urllib.parse.urlsplit(url)
    connection = pymysql.connect(
        host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
        user=urllib.parse.unquote(parts.username or "root"), password=urllib.parse.unquote(parts.password or ""),
        connect_timeout=5,
    )  # fmt: skip
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
        connection.commit()
    finally:
        connection.close()


def _redis_delete_prefix(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def mariadb_available(args: argparse.Namespace) -> str | None:
    """None if MariaDB and Redis answer, else why not."""
    try:
        _mysql_execute(args.mysql_url, "SELECT 1")
    except Exception as error:  # noqa: BLE001 - any failure means "not available"
        return f"MariaDB at {args.mysql_url}: {error}"
    try:
        import redis

        redis.Redis.from_url(args.redis_url, socket_timeout=5).ping()
    except Exception as error:  # noqa: BLE001
        return f"Redis at {args.redis_url}: {error}"
    return None


# --- running workloads -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    workload: str  # fanout, global, idle
    sockets: int = 0  # idle only
    rate: float = 0.0  # fanout, global: sends/s offered, instead of --rate (the equal-load pass)

    @property
    def label(self) -> str:
        if self.workload == "idle":
            return f"idle-{self.sockets}"
        return f"{self.workload}@{self.rate:g}/s" if self.rate else self.workload


@contextlib.contextmanager
def _nginx_in_front(servers: list[ServerProcess], log_path: Path) -> Iterator[str | None]:
    """nginx on a free port with the servers as its upstreams (the deploy's config); its URL, or None without nginx."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        yield None
        return
    loader = importlib.machinery.SourceFileLoader("nginx_conf", str(REPO / "scripts" / "nginx-conf"))
    spec = importlib.util.spec_from_loader("nginx_conf", loader)
    conf_module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    loader.exec_module(conf_module)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as run_dir:
        conf = Path(run_dir) / "nginx.conf"
        conf.write_text(conf_module.render(f"127.0.0.1:{port}", run_dir, [s.port for s in servers]))
        process = subprocess.Popen([nginx, "-p", run_dir, "-c", str(conf), "-g", "daemon off;"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError("nginx did not start") from None
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()  # not SIGKILL: a killed master leaves its workers listening
            process.wait(timeout=10)
            with contextlib.suppress(OSError):
                shutil.copyfile(Path(run_dir) / "error.log", log_path)


async def run_job(server: ServerProcess, job: Job, args: argparse.Namespace,
                  others: list[ServerProcess] = (),  # type: ignore[assignment]
                  observer: ServerProcess | None = None) -> dict[str, Any]:
    assert server.proc is not None
    target = Target(server.base_url, args.secret, server.proc.pid,
                    more_urls=tuple(o.base_url for o in others), more_pids=tuple(o.proc.pid for o in others),
                    metrics_token=args.metrics_token)
    if job.workload == "nproc":
        config = NprocConfig(
            groups=args.procs, sockets_per_group=args.nproc_sockets, global_share=args.global_share,
            messages=args.messages, concurrency=args.concurrency, rate=job.rate or args.rate,
            first_user=FIRST_USER["nproc"], timeout=args.timeout, settle_seconds=0.3 if args.smoke else 1.0,
        )  # fmt: skip
        seen_by = Target(observer.base_url, args.secret, observer.proc.pid) if observer and observer.proc else None
        result = await run_nproc(target, config, seen_by)
        add_cpu_per_delivery(result)
        return result
    if job.workload == "idle":
        procs = args.idle_procs or max(1, math.ceil(job.sockets / 5000))
        config = IdleConfig(
            sockets=job.sockets, procs=procs, first_user=FIRST_USER["idle"],
            settle_seconds=args.idle_settle, timeout=args.timeout,
        )  # fmt: skip
        return await run_idle(target, config)
    if job.workload == "storm":
        return await run_storm(target, StormConfig(sockets=args.storm_sockets, first_user=FIRST_USER["storm"],
                                                   timeout=args.timeout))
    if job.workload == "storm-restart":
        servers = [server, *others]

        async def restart() -> Target:
            """Every process of the target stopped (SIGTERM, as a deploy does) and started on its port again."""
            began = time.perf_counter()
            await asyncio.gather(*(s.stop() for s in servers))
            for s in servers:  # one after the other: the first runs the migrations
                await s.start()
            restart.seconds = round(time.perf_counter() - began, 3)  # type: ignore[attr-defined]
            return Target(server.base_url, args.secret, server.proc.pid,  # type: ignore[union-attr]
                          more_urls=tuple(o.base_url for o in others), more_pids=tuple(o.proc.pid for o in others))  # type: ignore[union-attr]

        return await run_storm(target, StormConfig(sockets=args.storm_sockets, first_user=FIRST_USER["storm-restart"],
                                                   timeout=args.timeout, restart=restart))
    if job.workload == "storm-rolling":
        servers = [server, *others]
        # Behind nginx (config/nginx.conf.template), as docs/deploy.md deploys
        # them, if it is installed; else each client tries the next process itself.
        with _nginx_in_front(servers, server.log_path.with_name(server.log_path.stem + "-nginx.log")) as nginx_url:

            def current() -> Target:
                if nginx_url:
                    return Target(nginx_url, args.secret, server.proc.pid,  # type: ignore[union-attr]
                                  more_pids=tuple(o.proc.pid for o in others))  # type: ignore[union-attr]
                return Target(server.base_url, args.secret, server.proc.pid,  # type: ignore[union-attr]
                              more_urls=tuple(o.base_url for o in others), more_pids=tuple(o.proc.pid for o in others))  # type: ignore[union-attr]

            async def roll() -> Target:
                """A rolling deploy: each process stopped (SIGTERM) and started again, one after the other."""
                began = time.perf_counter()
                for s in servers:
                    await s.stop()
                    await s.start()
                roll.seconds = round(time.perf_counter() - began, 3)  # type: ignore[attr-defined]
                return current()

            result = await run_storm(current(), StormConfig(
                sockets=args.storm_sockets, first_user=FIRST_USER["storm-rolling"], timeout=args.timeout,
                restart=roll, rolling=True, sends_per_s=20.0,
            ))
            result["through"] = "nginx" if nginx_url else "clients trying the next process"
            return result
    config = DeliveryConfig(
        workload=job.workload, receivers=args.receivers, messages=args.messages, concurrency=args.concurrency,
        senders=args.senders, rate=job.rate or args.rate, first_user=FIRST_USER[job.workload], timeout=args.timeout,
    )  # fmt: skip
    result = await run_delivery(target, config)
    add_cpu_per_delivery(result)
    return result


def add_cpu_per_delivery(result: dict[str, Any]) -> None:
    if result.get("server_cpu_s") is not None and result.get("deliveries"):
        # CPU per delivery depends less on what else the machine runs than wall-clock rates.
        result["server_cpu_us_per_delivery"] = round(result["server_cpu_s"] * 1e6 / result["deliveries"], 1)


async def run_all(args: argparse.Namespace, targets: list[str], jobs: list[Job], run_id: str, log_dir: Path) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.total_timeout
    max_members = max(100, args.receivers + 10)
    warned_load = False

    async def run_target(name: str, run_jobs: list[Job], database_tag: str) -> None:
        nonlocal warned_load
        with provision(name, database_tag, args, max_members) as spec:
            for job in run_jobs:
                row: dict[str, Any] = {"target": name, "label": job.label}
                if job.workload == "nproc" and spec.name == "baseline":
                    log(f"[bench] {name}: nproc skipped (the baseline has no conversations)")
                    continue
                if time.monotonic() > deadline:
                    row.update(ok=False, error=f"skipped: --total-timeout {args.total_timeout:g} s reached")
                    results.append(row)
                    continue
                log_name = f"{name}-{job.label.replace('/', '')}"
                server = ServerProcess(spec, log_dir / f"{log_name}.log")
                others = [ServerProcess(spec, log_dir / f"{log_name}-{n}.log")
                          for n in range(2, server_processes(name, args) + 1)]
                # nproc with several processes: one more holding no socket, to measure reading alone.
                observer = (ServerProcess(spec, log_dir / f"{log_name}-observer.log")
                            if job.workload == "nproc" and others else None)
                # Another busy process on this 2-core machine skews every figure: record it.
                load_before = round(os.getloadavg()[0], 2)
                if load_before > 1.5 and not warned_load:
                    warned_load = True
                    log(f"[bench] warning: 1-minute load average is {load_before}: other processes skew the figures")
                log(f"[bench] {name}: {job.label} ...")
                try:
                    await server.start()
                    for other in [*others, *([observer] if observer else [])]:
                        await other.start()
                    row.update(await run_job(server, job, args, others, observer))
                except Exception as error:  # noqa: BLE001 - one broken target must not hide the others
                    row.update(ok=False, error=f"{type(error).__name__}: {error}")
                finally:
                    if server.proc is not None and not server.alive() and "at start" not in row.get("error", ""):
                        # Died under us (crash, OOM, or a signal from outside): say so
                        # rather than report whatever symptom the client saw.
                        code = server.proc.returncode
                        row.update(ok=False, error=f"server process exited with code {code} during the workload")
                    await server.stop()
                    for other in [*others, *([observer] if observer else [])]:
                        await other.stop()
                row["server_log"] = str(server.log_path)
                row.update(scan_log(server.log_path))
                row["load_avg_1m_before"] = load_before
                log(f"[bench] {name}: {job.label} {'ok' if row.get('ok') else 'FAILED'} {summary_line(row)}")
                results.append(row)

    for name in targets:
        await run_target(name, jobs, run_id)
    if not args.rate and args.equal_load:
        # Closed loop runs two processes slower than one, and CPU per delivery
        # falls steeply with load (bigger batches): comparing them would
        # compare unequal work. So one process runs again at the rate the two
        # processes reached, and the ratio divides by that.
        for one, two in equal_load_pairs(targets):
            reached = [Job(row["label"], rate=round(row["sends_per_s"])) for row in results
                       if row["target"] == two and row["label"] in EQUAL_LOAD_WORKLOADS and row.get("ok")
                       and row.get("sends_per_s")]
            if reached:
                await run_target(one, reached, f"{run_id}_eq")
    add_ratios(results)
    return results


def equal_load_pairs(targets: list[str]) -> list[tuple[str, str]]:
    """(one-process target, its several-process counterpart on the same loop and revision), for pairs both in the run."""
    pairs = []
    for several in targets:
        parsed = TargetName.parse(several)
        if parsed.base in MULTI_PROCESS_TARGETS:
            one = parsed.with_base(MULTI_PROCESS_TARGETS[parsed.base])
            if one in targets:
                pairs.append((one, several))
    return pairs


def scan_log(path: Path) -> dict[str, Any]:
    """Count ERROR lines and tracebacks in a server log; keep the distinct exception lines.

    Not a pass/fail check (a log line is not a broken delivery), but an error
    under load is worth seeing next to the figures.
    """
    errors = 0
    exceptions: dict[str, int] = {}
    in_traceback = False
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    for line in lines:
        if " ERROR " in line or " CRITICAL " in line:
            errors += 1
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            # The first unindented line after a traceback names the exception.
            exceptions[line[:200]] = exceptions.get(line[:200], 0) + 1
            in_traceback = False
    return {"server_log_errors": errors, "server_exceptions": exceptions} if errors or exceptions else {"server_log_errors": 0}


def summary_line(row: dict[str, Any]) -> str:
    if row.get("error"):
        return row["error"]
    if row.get("workload") == "idle":
        return f"rss/socket={row.get('rss_per_socket_kib')} KiB opened={row.get('opened')}"
    latency = row.get("latency_ms") or {}
    return f"deliveries/s={row.get('deliveries_per_s')} p99={latency.get('p99')} ms checks={row.get('checks')}"


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each row's deliveries/s, p99 and RSS/socket divided by the baseline's for the same workload;
    two processes' CPU per delivery divided by one process's at the same load."""
    baseline = {row["label"]: row for row in results if row["target"] == "baseline" and row.get("ok")}
    for row in results:
        base = baseline.get(row["label"])
        if base is None or row["target"] == "baseline":
            continue
        ratios = {}
        for key, path in (("deliveries_per_s", ("deliveries_per_s",)), ("p99", ("latency_ms", "p99")),
                           ("cpu_per_delivery", ("server_cpu_us_per_delivery",)), ("rss_per_socket", ("rss_per_socket_kib",)),
                           ("handshakes_per_s", ("handshakes_per_s",))):
            mine, theirs = _dig(row, path), _dig(base, path)
            if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs > 0:
                ratios[key] = round(mine / theirs, 2)
        row["vs_baseline"] = ratios
    add_one_process_ratios(results)
    add_revision_ratios(results)


def add_one_process_ratios(results: list[dict[str, Any]]) -> None:
    """A two-process row's CPU per delivery divided by one process's at the same offered load.

    The one-process row is the same workload when the run had a fixed rate,
    or the equal-load pass's row at the rate the two processes reached.
    """
    rows = {(row["target"], row["label"]): row for row in results if row.get("ok")}
    for one, two in equal_load_pairs(sorted({row["target"] for row in results})):
        for (target, label), row in rows.items():
            if target != two:
                continue
            single = rows.get((one, f"{label}@{round(row.get('sends_per_s') or 0):g}/s")) or rows.get((one, label))
            if single is None or not _same_rate(single, row):
                continue  # no run of one process at this load (or it fell far short of it)
            mine, theirs = row.get("server_cpu_us_per_delivery"), single.get("server_cpu_us_per_delivery")
            if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs > 0:
                row["vs_one_process"] = {"cpu_per_delivery": round(mine / theirs, 2), "at": single["label"],
                                         "one_process_cpu_us_per_delivery": theirs}


def add_revision_ratios(results: list[dict[str, Any]]) -> None:
    """A ``name@rev=COMMIT`` row gets this checkout's figure ÷ that revision's, for the same target and workload.

    Below 1 this checkout is cheaper (CPU per delivery, p99) or slower
    (deliveries/s). CPU per delivery only when both ran at nearly the same
    sends/s: it falls with load (see add_one_process_ratios).
    """
    rows = {(row["target"], row["label"]): row for row in results if row.get("ok")}
    for (target, label), old in rows.items():
        parsed = TargetName.parse(target)
        current = rows.get((parsed.current, label)) if parsed.rev else None
        if current is None:
            continue
        ratios: dict[str, Any] = {"rev": parsed.rev}
        paths = [("deliveries_per_s", ("deliveries_per_s",)), ("p99", ("latency_ms", "p99"))]
        if _same_rate(old, current):
            paths.append(("cpu_per_delivery", ("server_cpu_us_per_delivery",)))
        for key, path in paths:
            mine, theirs = _dig(current, path), _dig(old, path)
            if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)) and theirs > 0:
                ratios[key] = round(mine / theirs, 2)
        old["current_vs_rev"] = ratios


def _same_rate(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Both rows ran at nearly the same sends/s (within 10 %: a server that falls a little short of an
    open-loop rate is saturated there, where its CPU per delivery is lowest)."""
    ra, rb = a.get("sends_per_s") or 0, b.get("sends_per_s") or 0
    return ra > 0 and rb > 0 and abs(ra - rb) <= 0.1 * max(ra, rb)


def _dig(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


# --- reporting ------------------------------------------------------------------------


COLUMNS = [
    ("target", ("target",)),
    ("workload", ("label",)),
    ("ok", ("ok",)),
    ("sends/s", ("sends_per_s",)),
    ("deliveries/s", ("deliveries_per_s",)),
    ("p50 ms", ("latency_ms", "p50")),
    ("p95 ms", ("latency_ms", "p95")),
    ("p99 ms", ("latency_ms", "p99")),
    ("max ms", ("latency_ms", "max")),
    ("CPU µs/deliv", ("server_cpu_us_per_delivery",)),
    ("RSS/socket KiB", ("rss_per_socket_kib",)),
    ("deliv/s ÷ base", ("vs_baseline", "deliveries_per_s")),
    ("p99 ÷ base", ("vs_baseline", "p99")),
    ("CPU/deliv ÷ base", ("vs_baseline", "cpu_per_delivery")),
    ("CPU/deliv ÷ 1 proc", ("vs_one_process", "cpu_per_delivery")),
    ("read÷deliv conv", ("read_per_delivered", "conversation")),
    ("read÷deliv global", ("read_per_delivered", "global")),
    ("current÷rev CPU/deliv", ("current_vs_rev", "cpu_per_delivery")),
    ("current÷rev deliv/s", ("current_vs_rev", "deliveries_per_s")),
    ("RSS/sock ÷ base", ("vs_baseline", "rss_per_socket")),
    ("storm s", ("storm_seconds",)),
    ("restart s", ("restart_seconds",)),
    ("resumed", ("first_frames", "resumed")),
    ("resume_failed", ("first_frames", "resume_failed")),
    ("handshakes/s", ("handshakes_per_s",)),
    ("hs p99 ms", ("handshake_ms", "p99")),
    ("no socket max ms", ("without_socket_ms", "max")),
    ("hs/s ÷ base", ("vs_baseline", "handshakes_per_s")),
    ("log errors", ("server_log_errors",)),
]


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for result in results:
        cells = []
        for _, path in COLUMNS:
            value = _dig(result, path)
            if value is None:
                cells.append("")
            elif isinstance(value, bool):
                cells.append("yes" if value else "NO")
            elif isinstance(value, float):
                cells.append(f"{value:,.2f}" if value < 100 else f"{value:,.0f}")
            else:
                cells.append(str(value))
        rows.append(cells)
    return rows


def text_table(results: list[dict[str, Any]]) -> str:
    header = [name for name, _ in COLUMNS]
    rows = table_rows(results)
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) if rows else len(header[i]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    failures = [f"  {r['target']} {r['label']}: {r.get('error') or r.get('checks')}" for r in results if not r.get("ok")]
    if failures:
        lines += ["", "FAILED:"] + failures
    lines += per_process_lines(results)
    lines += log_error_lines(results)
    return "\n".join(lines)


PROCESS_COLUMNS = [
    ("target", None), ("workload", None), ("process", ("process",)), ("sockets", ("sockets",)),
    ("deliveries/s", ("deliveries_per_s",)), ("CPU s", ("cpu_s",)), ("CPU µs/deliv", ("cpu_us_per_delivery",)),
    ("conv read", ("entries_read", "conversation")), ("conv deliv'd", ("entries_delivered", "conversation")),
    ("global read", ("entries_read", "global")), ("global deliv'd", ("entries_delivered", "global")),
    ("read÷deliv conv", ("read_per_delivered", "conversation")), ("read÷deliv global", ("read_per_delivered", "global")),
    ("read÷deliv all", ("read_per_delivered", "all_kinds")), ("frames", ("frames_sent",)),
]


def per_process_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """The nproc rows' processes, one line each, and the observer's (a process with no socket)."""
    rows = []
    for result in results:
        processes = list(result.get("per_process") or [])
        if result.get("observer"):
            observer = result["observer"]
            processes.append({**observer, "process": "observer", "sockets": 0,
                              "cpu_us_per_delivery": None, "read_per_delivered": {}})
        for process in processes:
            cells = []
            for name, path in PROCESS_COLUMNS:
                value = result["target"] if name == "target" else result["label"] if name == "workload" else _dig(process, path)
                cells.append("" if value is None else f"{value:,.2f}" if isinstance(value, float) and value < 100
                             else f"{value:,.0f}" if isinstance(value, float) else str(value))
            rows.append(cells)
    return rows


def per_process_lines(results: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    rows = per_process_rows(results)
    if not rows:
        return []
    header = [name for name, _ in PROCESS_COLUMNS]
    observers = [f"{r['target']} {r['label']}: {r['observer']['cpu_us_per_entry_read']} µs CPU per entry read"
                 for r in results if (r.get("observer") or {}).get("cpu_us_per_entry_read") is not None]
    if markdown:
        lines = ["", "## Per process (nproc)", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return lines + ([""] + [f"- observer (no socket), {line}" for line in observers] if observers else [])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = ["", "Per process (nproc):", "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return lines + [f"  observer (no socket), {line}" for line in observers]


def log_error_lines(results: list[dict[str, Any]], markdown: bool = False) -> list[str]:
    noisy = [r for r in results if r.get("server_log_errors")]
    if not noisy:
        return []
    item, sub = ("- ", "  - ") if markdown else ("  ", "    ")
    lines = ["", "## Server log errors" if markdown else "Server log errors (see the logs):", ""][: 3 if markdown else 2]
    for r in noisy:
        lines.append(f"{item}{r['target']} {r['label']}: {r['server_log_errors']} ERROR lines in `{Path(r.get('server_log', '')).name}`")
        lines += [f"{sub}{count} × `{exception}`" for exception, count in (r.get("server_exceptions") or {}).items()]
    return lines


def markdown_table(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = [
        f"# Benchmark run {meta['run_id']}",
        "",
        f"{meta['started']} · commit `{meta['commit']}` · {meta['cpus']} CPUs · Python {meta['python']} · "
        f"R={meta['sizes']['receivers']} K={meta['sizes']['messages']} C={meta['sizes']['concurrency']} "
        f"rate={meta['sizes'].get('rate') or 'max'} "
        f"idle N={','.join(map(str, meta['sizes']['idle_sockets']))} "
        f"procs={meta['sizes']['procs']} nproc sockets/group={meta['sizes']['nproc_sockets']} "
        f"global share={meta['sizes']['global_share']}"
        + "".join(f" · `{rev}` = `{full[:12]}`" for rev, full in meta.get("revisions", {}).items()),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    failures = [r for r in results if not r.get("ok")]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {r['target']} {r['label']}: {r.get('error') or json.dumps(r.get('checks'))}" for r in failures]
    lines += per_process_lines(results, markdown=True)
    lines += log_error_lines(results, markdown=True)
    lines += ["", "Ratios divide by the baseline's figure for the same workload (deliveries/s: higher is better; p99, CPU and RSS: lower is better).",
              "CPU/deliv ÷ 1 proc divides two processes' CPU per delivery by one process's at the same offered load "
              "(a row `workload@N/s` is one process run again at the rate the several processes reached in closed loop).",
              "current÷rev divides this checkout's figure by that of the `@rev=` row's revision, same target and workload "
              "(CPU per delivery only when both ran at nearly the same sends/s).",
              "read÷deliv: log entries a process read ÷ those that reached one of its sockets (nproc; the mean over processes)."]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --- command line --------------------------------------------------------------------


def _known_target(name: str) -> bool:
    try:
        return TargetName.parse(name).base in ALL_TARGETS
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets", default=",".join(DEFAULT_TARGETS),
        help="comma list of: " + ", ".join(ALL_TARGETS) + " (default: all but mariadb-np); a suffix @asyncio or "
             "@uvloop picks the event loop (default: the server's own, uvloop), e.g. mariadb,mariadb@asyncio side by "
             "side; @rev=COMMIT runs that revision's server from a git worktree, e.g. mariadb,mariadb@rev=6e915a3",
    )
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help="comma list of: " + ", ".join(ALL_WORKLOADS) + " (default: all but nproc)")
    parser.add_argument("--procs", type=int, default=4,
                        help="processes of mariadb-np, and groups (conversations) of nproc on every target (default 4)")
    parser.add_argument("--nproc-sockets", type=int, default=25, help="nproc: sockets per group (default 25)")
    parser.add_argument("--global-share", type=float, default=0.1,
                        help="nproc: share of the messages sent to the global chat (default 0.1)")
    parser.add_argument("-R", "--receivers", type=int, default=50, help="receivers for fanout/global (default 50)")
    parser.add_argument("-K", "--messages", type=int, default=1000, help="messages for fanout/global (default 1000)")
    parser.add_argument("-C", "--concurrency", type=int, default=10, help="HTTP sends in flight (default 10)")
    parser.add_argument("--senders", type=int, default=0, help="distinct sending users (default min(C, R))")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages/s, open loop, the same for every target (default 0: as fast as C allows)")
    parser.add_argument("--no-equal-load", dest="equal_load", action="store_false",
                        help="in closed loop, skip running one process again at the rate two processes reached "
                             "(the run that CPU/deliv ÷ 1 proc divides by)")
    parser.add_argument("--idle-sockets", default="2000", help="comma list of idle socket counts (default 2000)")
    parser.add_argument("--storm-sockets", type=int, default=2000, help="sockets that reconnect at once in the storm (default 2000)")
    parser.add_argument("--idle-procs", type=int, default=0, help="client processes for idle (default: one per 5000 sockets)")
    parser.add_argument("--idle-settle", type=float, default=2.0, help="seconds to wait before each RSS reading (default 2)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per workload (default 300)")
    parser.add_argument("--total-timeout", type=float, default=3600.0, help="seconds for the whole run; later workloads are skipped")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (R=3 K=20 C=2 N=20), print only, seconds")
    parser.add_argument("--results-dir", type=Path, default=None, help=f"where to write results (default {RESULTS_DIR}; smoke: none)")
    parser.add_argument("--mysql-url", default="mysql+aiomysql://root@127.0.0.1:3306", help="server URL without database")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--secret", default=None, help="CHAT_VK_SECRET for our server (default: random per run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 if every check passed, 1 if not, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit_targets = any(a == "--targets" or a.startswith("--targets=") for a in (argv if argv is not None else sys.argv[1:]))
    if args.smoke:
        args.receivers, args.messages, args.concurrency = 3, 20, 2
        args.nproc_sockets = 3
        args.idle_sockets = "20"
        args.storm_sockets = 20
        args.idle_settle = 0.3
        args.timeout = min(args.timeout, 60.0)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(t for t in targets if not _known_target(t)) + sorted(set(workloads) - set(ALL_WORKLOADS))
    if unknown or not targets or not workloads:
        log(f"unknown or empty targets/workloads: {unknown}")
        return 2
    if args.procs < 1 or not 0 <= args.global_share <= 1 or args.nproc_sockets < 1:
        log("--procs and --nproc-sockets must be at least 1, --global-share between 0 and 1")
        return 2
    idle_sizes = [int(n) for n in args.idle_sockets.split(",") if n.strip()]
    args.secret = args.secret or secrets.token_urlsafe(24)
    args.metrics_token = secrets.token_urlsafe(24)
    self_check()
    raise_nofile_limit()

    for needs_mariadb in [t for t in targets if t.startswith("mariadb")]:
        why = mariadb_available(args)
        if why:
            if explicit_targets:
                log(f"[bench] {needs_mariadb} target requested but not available: {why}")
                return 2
            log(f"[bench] skipping {needs_mariadb} target: {why}")
            targets.remove(needs_mariadb)
    if any(t != "baseline" for t in targets) and not (REPO / "run.py").exists():
        log("[bench] our server (run.py) is not in the repository yet")
        return 2

    jobs = [Job(w) for w in workloads if w != "idle"]
    if "idle" in workloads:
        jobs += [Job("idle", n) for n in idle_sizes]

    started = datetime.datetime.now().astimezone()
    run_id = started.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    save_dir = args.results_dir or (None if args.smoke else RESULTS_DIR)
    log_dir = (save_dir / f"logs-{run_id}") if save_dir else Path(tempfile.mkdtemp(prefix="chatbench-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)

    commit = git_commit()  # before the run: the tree may move while it runs
    revs = sorted({TargetName.parse(t).rev for t in targets} - {""})
    with contextlib.ExitStack() as checkouts:
        try:
            args.checkouts = checkouts.enter_context(revision_checkouts(revs))
        except (subprocess.SubprocessError, RuntimeError) as error:
            log(f"[bench] cannot check out {', '.join(revs)}: {getattr(error, 'stderr', '') or error}")
            return 2
        results = asyncio.run(run_all(args, targets, jobs, run_id.replace("-", "_"), log_dir))
    revisions = {rev: commit_of for rev, (_, commit_of) in args.checkouts.items()}
    all_ok = all(r.get("ok") for r in results)
    meta = {
        "run_id": run_id,
        "started": started.isoformat(timespec="seconds"),
        "commit": commit,
        "revisions": revisions,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "targets": targets,
        "sizes": {
            "receivers": args.receivers, "messages": args.messages, "concurrency": args.concurrency,
            "senders": args.senders, "rate": args.rate, "idle_sockets": idle_sizes,
            "procs": args.procs, "nproc_sockets": args.nproc_sockets, "global_share": args.global_share,
        },
    }  # fmt: skip
    print(text_table(results))
    if save_dir:
        json_path = save_dir / f"bench-{run_id}.json"
        md_path = save_dir / f"bench-{run_id}.md"
        json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=2, ensure_ascii=False))
        md_path.write_text(markdown_table(results, meta))
        log(f"[bench] wrote {json_path} and {md_path}; server logs in {log_dir}")
    elif all_ok:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        log(f"[bench] server logs kept in {log_dir}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
