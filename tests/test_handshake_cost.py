"""What a handshake costs the database (issue 21): nothing for a returning user whose launch carries
the profile already stored; the profile's write when it changed. Counted with the engine's own
statement events on the real database, on the server that holds the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

import pytest
from sqlalchemy import event

from server.chat import PROFILE_WRITERS
from storage.records import Profile, default_profile
from tests.helpers import ServerUnderTest, close_and_wait, eventually, profile_writes_held

pytestmark = pytest.mark.gen_test(timeout=60)


@contextlib.contextmanager
def statements(server: ServerUnderTest) -> Iterator[list[str]]:
    """The SQL statements the socket-holding server sends while the block runs."""
    seen: list[str] = []
    engine = server.chat_server.database.engine.sync_engine

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_returning_user_with_the_same_profile_costs_no_database_call(server: ServerUnderTest):
    alice = server.user(1)
    with statements(server) as first_time:
        socket = await alice.connect(name="Алиса", avatar="https://example.com/a.png")
    assert any("users" in sql for sql in first_time), first_time  # a new user: stored
    await close_and_wait(server, socket)

    with statements(server) as again:
        socket = await alice.connect(name="Алиса", avatar="https://example.com/a.png")
    assert again == []
    await close_and_wait(server, socket)
    with statements(server) as without_profile:
        socket = await alice.connect()  # a launch without one keeps the stored profile
    assert without_profile == []

    # A changed profile is stored, and is what others see from then on.
    with statements(server) as renamed:
        await alice.connect(name="Алиса Петровна")
    assert any("users" in sql for sql in renamed), renamed
    bob = server.user(2)
    bob_socket = await bob.connect()
    conversation_id = await bob.create("чай")
    await alice.join(conversation_id)
    frame = await bob_socket.next_frame()
    while frame["event"] != "joined_conversation":
        frame = await bob_socket.next_frame()
    assert frame["data"]["name"] == "Алиса Петровна"
    assert (await server.database.profile(1)).name == "Алиса Петровна"


async def test_a_profile_the_cache_lost_is_read_from_the_database_again(server: ServerUnderTest):
    alice = server.user(1)
    socket = await alice.connect(name="Алиса")
    await close_and_wait(server, socket)
    if server.backend == "embedded":
        server.chat_server.cache._profiles.clear()  # what a restart of the process does to its memory
    else:
        await server.chat_server.cache.client.delete(server.chat_server.cache.profile_key(1))
    with statements(server) as after_loss:
        await alice.connect(name="Алиса")
    assert any("users" in sql for sql in after_loss), after_loss
    with statements(server) as cached_again:
        await alice.connect(name="Алиса")
    assert cached_again == []


async def test_a_burst_of_first_time_users_is_stored_in_batches(server: ServerUnderTest):
    """Handshakes waiting for the database are stored a batch per transaction, each user's own profile."""
    users = list(range(100, 140))
    with statements(server) as sent:
        with profile_writes_held(server):
            opening = [asyncio.ensure_future(server.user(u).connect(name=f"Гость {u}")) for u in users]
            writes = server.chat_server.chat.profile_writes
            await eventually(lambda: writes.submitted() == len(users), "not every handshake waits for its write")
        sockets = await asyncio.gather(*opening)
    assert [socket.user_id for socket in sockets] == users
    upserts = [sql for sql in sent if sql.lstrip().upper().startswith("INSERT INTO USERS")]
    assert 1 <= len(upserts) <= 2 * PROFILE_WRITERS, len(upserts)  # not one per user
    for user_id in users:
        assert (await server.database.profile(user_id)).name == f"Гость {user_id}"


async def test_one_users_launches_in_one_batch_keep_the_latest_profile(server: ServerUnderTest):
    stored = await server.database.save_profiles([(7, "Первое", None), (7, None, "https://example.com/7.png"),
                                                  (8, None, None), (7, "Второе", None)])
    latest = Profile(name="Второе", avatar="https://example.com/7.png")
    assert stored == [latest, latest, default_profile(8), latest]
    assert await server.database.profile(7) == latest
    assert await server.database.profile(8) == default_profile(8)
    # Unchanged launches write nothing.
    with statements(server) as sent:
        again = await server.database.save_profiles([(7, "Второе", None), (8, None, None)])
    assert again == [latest, default_profile(8)]
    assert not [sql for sql in sent if "INSERT" in sql.upper()]
