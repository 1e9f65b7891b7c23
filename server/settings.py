"""Configuration: ``config/chat.toml`` defaults, an optional file, then the environment.

The environment wins, as docs/API.md §7 asks. Settings are read once at
start-up into a frozen :class:`Settings` that is passed to whatever needs it.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from server.eventloop import loop_factory

DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "config" / "chat.toml"
# The metrics port of a process whose metrics_addr names a host only: 8080 → 9180.
METRICS_PORT_OFFSET = 1100


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = ""
    redis_url: str = ""
    redis_prefix: str = "chat:"
    vk_secret: str = ""
    cors_origins: tuple[str, ...] = ()
    max_members: int = 100
    data_dir: str = "./data"
    auth_max_age: int = 0
    ws_queue_limit: int = 1000
    max_handshakes: int = 256  # WebSocket handshakes in progress per process; beyond, refused with 1013 (0: no limit)
    max_sockets_per_user: int = 20  # open sockets of one user on all processes; beyond, refused with 1008 (0: no cap)
    max_sockets_per_address: int = 0  # open sockets from one client address on this process (0: no cap)
    # Peers whose X-Real-IP names the client's address (a proxy in front); any other peer is the client.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    send_rate_limit: float = 5.0
    resume_window: float = 120.0
    # Where the /metrics listener binds: "host:port", a host alone (then the
    # port is the API port + METRICS_PORT_OFFSET, so processes on one host
    # each get their own), or ""/"off" for none. config/chat.toml sets
    # "127.0.0.1"; code that builds Settings itself (tests, benches) gets no
    # listener unless it asks.
    metrics_addr: str = ""
    metrics_token: str = ""  # if set, /metrics is also served on the API port to this bearer token
    db_timeout: float = 5.0
    redis_timeout: float = 1.0
    event_loop: str = "uvloop"  # or "asyncio" (server/eventloop.py)

    def metrics_bind(self, api_port: int) -> tuple[str, int] | None:
        """(host, port) the metrics listener binds next to API port ``api_port``, or None; ValueError if malformed."""
        address = self.metrics_addr
        if not address or address == "off":
            return None
        if address.endswith("]") or ":" not in address:  # a host alone: "127.0.0.1", "[::1]"
            host = address.strip("[]")
            if not host or host.isdigit():
                raise ValueError(f"setting metrics_addr must be host:port, a host, or off, got {address!r}")
            return host, api_port + METRICS_PORT_OFFSET if api_port else 0
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"setting metrics_addr must be host:port, a host, or off, got {address!r}")
        return host.strip("[]"), int(port)

    @functools.cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed (an address is a network of one); ValueError if one is malformed."""
        try:
            return tuple(ipaddress.ip_network(entry, strict=False) for entry in self.trusted_proxies)
        except ValueError:
            raise ValueError(
                f"setting trusted_proxies must be addresses or networks, got {','.join(self.trusted_proxies)!r}"
            ) from None

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data_dir) / "chat.sqlite3"

    @property
    def effective_database_url(self) -> str:
        """The configured URL, or the embedded SQLite file."""
        return self.database_url or f"sqlite+aiosqlite:///{self.sqlite_path}"


def _coerce(name: str, value: Any) -> Any:
    field_type = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if field_type == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name} must be a number, got {value!r}") from None
    if field_type == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name} must be an integer, got {value!r}") from None
    if field_type == "tuple[str, ...]":
        if isinstance(value, (list, tuple)):
            items = value
        else:
            items = str(value).split(",")
        return tuple(item.strip() for item in items if item.strip())
    return str(value)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the defaults file, ``CHAT_CONFIG`` if set, the environment, then overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    files = [DEFAULTS_FILE]
    if environ.get("CHAT_CONFIG"):
        files.append(Path(environ["CHAT_CONFIG"]))
    for path in files:
        with open(path, "rb") as config_file:
            values.update(tomllib.load(config_file))
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings in config: {', '.join(sorted(unknown))}")
    for name in known:
        env_value = environ.get(f"CHAT_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    values.update(overrides)
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()})
    loop_factory(settings.event_loop)  # a name it does not know is refused here, before anything starts
    settings.trusted_proxy_networks  # so is a malformed proxy list
    return settings
