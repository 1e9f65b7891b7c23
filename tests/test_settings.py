"""Configuration: defaults file, CHAT_CONFIG file, environment (which wins)."""

from __future__ import annotations

import pytest

from server.eventloop import loop_factory
from server.settings import load_settings


def test_defaults():
    settings = load_settings(environ={})
    assert (settings.host, settings.port, settings.max_members, settings.auth_max_age) == ("127.0.0.1", 8080, 100, 0)
    assert settings.database_url == "" and settings.redis_url == "" and settings.cors_origins == ()
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.event_loop == "uvloop"


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_the_event_loop_setting_picks_the_loop(name):
    loop = loop_factory(load_settings(environ={"CHAT_EVENT_LOOP": name}).event_loop)()
    try:
        assert type(loop).__module__.split(".")[0] == name
    finally:
        loop.close()


def test_file_then_environment(tmp_path):
    config = tmp_path / "chat.toml"
    config.write_text('port = 9000\nmax_members = 7\ncors_origins = ["https://a.example"]\n')
    settings = load_settings(environ={"CHAT_CONFIG": str(config), "CHAT_MAX_MEMBERS": "12"})
    assert settings.port == 9000 and settings.max_members == 12
    assert settings.cors_origins == ("https://a.example",)
    settings = load_settings(environ={"CHAT_CORS_ORIGINS": "https://a.example, https://b.example"})
    assert settings.cors_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize("environ", [{"CHAT_PORT": "eighty"}, {"CHAT_MAX_MEMBERS": ""}, {"CHAT_EVENT_LOOP": "trio"}])
def test_bad_values_fail_loudly(environ):
    with pytest.raises(ValueError):
        load_settings(environ=environ)


def test_unknown_keys_in_a_file_fail_loudly(tmp_path):
    config = tmp_path / "chat.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        load_settings(environ={"CHAT_CONFIG": str(config)})


def test_rate_limiter_refills_over_time():
    import time

    from server.ratelimit import retry_after_secs
    from storage.token_buckets import RateLimiter

    limiter = RateLimiter(rate=10, burst=2)
    assert limiter.take(1) == 0 and limiter.take(1) == 0
    wait = limiter.take(1)
    assert 0 < wait <= 0.1 and retry_after_secs(wait) == 1
    assert limiter.take(2) == 0  # every key has its own bucket
    time.sleep(0.15)  # a token refills in 0.1 s
    assert limiter.take(1) == 0
    assert RateLimiter(rate=0).take(1) == 0


async def _take_tokens(bus, user_id: int, count: int) -> list[float]:
    return [await bus.take_token(user_id, 10, 2) for _ in range(count)]


def test_the_in_memory_bus_keeps_the_send_buckets_of_its_one_process():
    import asyncio

    from storage.bus import MemoryBus

    bus = MemoryBus(window_secs=120)
    first, second, third = asyncio.run(_take_tokens(bus, 1, 3))
    assert first == 0 and second == 0 and 0 < third <= 0.1  # a burst of 2, then a wait
    assert asyncio.run(_take_tokens(bus, 2, 1)) == [0]


def test_trusted_proxies_are_addresses_or_networks():
    settings = load_settings({"CHAT_TRUSTED_PROXIES": "10.0.0.0/8, ::1,192.0.2.7"})
    assert [str(n) for n in settings.trusted_proxy_networks] == ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]
    with pytest.raises(ValueError, match="trusted_proxies"):
        load_settings({"CHAT_TRUSTED_PROXIES": "10.0.0.0/8,nginx"})
