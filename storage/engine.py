"""The engine every transaction runs on: connections, sessions, deadlines, migrations.

:class:`DatabaseEngine` is the base of :class:`storage.database.Database`;
the stores (storage/messages.py, conversations.py, users.py) run their
transactions through its ``_read``, ``_write`` and ``_write_connection``.

Every operation has a deadline (``timeout_secs``, the setting
``CHAT_DB_TIMEOUT``): connecting, waiting for a pooled connection, the
statements and the commit together. Past it the operation is cancelled and
raises StorageTimeout (503 to the client); SQLAlchemy closes a connection
cancelled mid-statement instead of returning it to the pool, so a frozen
server leaves no half-used connection behind.

SQLite has one writer at a time; rather than letting concurrent writers fail
with "database is locked", write transactions on SQLite queue on an
in-process lock (the server is one process). MySQL needs no such lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker, create_async_engine

from storage import deadline
from storage.errors import StorageTimeout

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# MySQL's "deadlock found, try restarting the transaction": InnoDB picked this
# transaction as the victim (concurrent inserts of one unique key can do it).
MYSQL_DEADLOCK = 1213
TRANSACTION_ATTEMPTS = 3
DEFAULT_TIMEOUT_SECS = 5.0


@contextlib.asynccontextmanager
async def _invalidated_if_cancelled(holder: Any) -> AsyncIterator[Any]:
    """Yield a session or connection; close it at the end, and invalidate it first if cancelled (see DatabaseEngine._session)."""
    try:
        yield holder
    except asyncio.CancelledError:
        try:
            await holder.invalidate()
        except Exception:  # already broken: nothing more to release
            pass
        raise
    finally:
        await holder.close()


def bounded(operation: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Give a Database method the database's deadline; past it, StorageTimeout.

    Outside ``retried``: one deadline for the operation, retries included.
    The cancellation also ends a wait for the SQLite write lock or the pool.
    """

    @functools.wraps(operation)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        database = args[0]
        try:
            async with deadline.timeout(database.timeout_secs):  # type: ignore[attr-defined]
                return await operation(*args, **kwargs)
        except TimeoutError:
            raise StorageTimeout(f"{operation.__name__} took over {database.timeout_secs:g} s") from None  # type: ignore[attr-defined]

    return run


def retried(transaction: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a whole transaction again when MySQL rolls it back as a deadlock victim."""

    @functools.wraps(transaction)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                return await transaction(*args, **kwargs)
            except OperationalError as error:
                code = error.orig.args[0] if error.orig is not None and error.orig.args else None
                if code != MYSQL_DEADLOCK or attempt == TRANSACTION_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    return run


class DatabaseEngine:
    """The engine, its sessions and the write lock; migrations and the sole-process claim."""

    def __init__(self, url: str, timeout_secs: float = DEFAULT_TIMEOUT_SECS) -> None:
        parsed = make_url(url)
        self.timeout_secs = timeout_secs
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        engine_options: dict = {}
        if self.is_sqlite:
            Path(parsed.database or ".").parent.mkdir(parents=True, exist_ok=True)
        else:
            # utf8mb4 on the connection too, or emoji are mangled on the way.
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
            engine_options.update(
                # Locking reads (storage/conversation_lock.py) must see the latest committed rows.
                isolation_level="READ COMMITTED",
                # No pre-ping: it costs a round trip per transaction. After a
                # MySQL restart one request fails with 503 and the pool is renewed.
                pool_recycle=3600,
                # Every session ends in COMMIT or ROLLBACK already; a second
                # ROLLBACK on return to the pool would be one more round trip.
                pool_reset_on_return=None,
                pool_size=10, max_overflow=20,
                # Both within the operation's deadline (bounded), which is what
                # answers; these keep a lone connect or checkout from outliving it.
                pool_timeout=timeout_secs,
                connect_args={"connect_timeout": max(1, round(timeout_secs))},
            )
        self.url = parsed
        self.engine = create_async_engine(parsed, **engine_options)
        if self.is_sqlite:
            event.listen(
                self.engine.sync_engine, "connect", functools.partial(_configure_sqlite, busy_timeout_secs=timeout_secs)
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_write_lock = asyncio.Lock() if self.is_sqlite else None
        self._migrate_lock = f"chat-migrate:{parsed.database}"
        self._sole_claim: Any = None  # the connection holding this process's claim (claim_sole_process)

    async def claim_sole_process(self) -> bool:
        """Take the database for this process alone (a process without Redis); False if another holds it.

        A MySQL named lock lives as long as the connection that took it: a
        process that dies, however it dies, frees it. SQLite is one process's
        file by design and needs no claim.
        """
        if self.is_sqlite:
            return True
        connection = await self.engine.connect()
        name = f"chat-sole-process:{self.url.database}"
        taken = (await connection.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": name})).scalar()
        if taken != 1:
            await connection.close()
            return False
        self._sole_claim = connection
        return True

    async def close(self) -> None:
        """Close the pool's connections; a frozen server does not hold up shutdown past the deadline."""
        try:
            async with asyncio.timeout(self.timeout_secs):
                if self._sole_claim is not None:
                    claim, self._sole_claim = self._sole_claim, None
                    try:
                        await claim.close()
                    except Exception:  # the connection is already gone: so is the lock
                        pass
                await self.engine.dispose()
        except TimeoutError:
            pass

    async def ping(self) -> None:
        """Return once the database answers a query; raise if it cannot (readiness)."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration."""

        def upgrade(connection) -> None:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        async with self.engine.begin() as connection:
            if not self.is_sqlite:
                # Processes started together (docs/deploy.md) migrate one after the other:
                # the first upgrades, the others find the schema at head.
                await connection.execute(text("SELECT GET_LOCK(:name, 60)"), {"name": self._migrate_lock})
            try:
                await connection.run_sync(upgrade)
            finally:
                if not self.is_sqlite:
                    await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": self._migrate_lock})

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction, committed on success."""
        lock = self._sqlite_write_lock or contextlib.nullcontext()
        async with lock, self._session() as session:
            yield session
            await session.commit()

    @contextlib.asynccontextmanager
    async def _write_connection(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction on a bare connection, committed on success: the send path's.

        No ORM session: its bookkeeping is a share of the hot path's CPU that
        buys nothing for statements that return plain rows. Cancelled
        mid-statement, the connection is closed, not rolled back (see _session).
        """
        lock = self._sqlite_write_lock or contextlib.nullcontext()
        async with lock, _invalidated_if_cancelled(await self.engine.connect()) as connection:
            await connection.begin()
            yield connection
            await connection.commit()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._session() as session:
            yield session

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        """A session whose connection is closed, not reused, when a deadline cancels it mid-statement.

        A cancelled statement leaves its connection halfway through the
        protocol (its answer unread): a ROLLBACK on it would read that answer,
        or wait forever, and the pool would hand out a broken connection, or
        keep one in an open transaction that holds table locks. Closing it
        makes the server roll back on its own.
        """
        async with _invalidated_if_cancelled(self.sessions()) as session:
            yield session


def _configure_sqlite(dbapi_connection, _record, busy_timeout_secs: float) -> None:
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets readers run beside
    # the single writer; busy_timeout covers another process's brief locks.
    # It is the deadline too: a statement waiting for a lock blocks the
    # connection's thread, which cancelling the coroutine does not stop.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_secs * 1000)}")
    cursor.close()
