"""What storage reports: the refusals its transactions decide, and which failures mean "unreachable now".

A refusal is a fact about the data ("that conversation does not exist"),
decided inside a transaction; the API layer gives each its code and status
(``server.errors.from_refusal``). Storage knows nothing of HTTP.
"""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc


class Refusal(Exception):
    """A transaction refused what it was asked to do; nothing was written."""


class ConversationMissing(Refusal):
    """The conversation does not exist (or no longer does)."""


class NotMember(Refusal):
    """The user is not a member of the conversation."""


class AlreadyMember(Refusal):
    """The user is already a member of the conversation."""


class MembersFull(Refusal):
    """The conversation has as many members as the limit allows."""


class NameTaken(Refusal):
    """The user already created a conversation with this name."""


class NotCreator(Refusal):
    """Only the conversation's creator may do this."""


class StorageTimeout(Exception):
    """A database operation passed its deadline (``CHAT_DB_TIMEOUT``): the server is frozen or overloaded."""


# MySQL client errors meaning "the server is not reachable now": can't connect
# (2002, 2003), gone away or lost (2006, 2013), too many connections (1040).
MYSQL_UNAVAILABLE_CODES = {1040, 2002, 2003, 2006, 2013}
SQLITE_UNAVAILABLE_MESSAGES = ("unable to open database", "database is locked", "disk i/o error")


def _is_cluster_unavailable(error: BaseException) -> bool:
    """A Redis Cluster that is failing over or resharding, or none of whose nodes answers."""
    if isinstance(error, (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError,
                          redis.exceptions.SlotNotCoveredError)):
        return True
    # The cluster client wraps "no seed node answered" around the connection error.
    return isinstance(error, redis.exceptions.RedisClusterException) and isinstance(
        error.__cause__, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def is_storage_unavailable(error: BaseException) -> bool:
    """Whether an error means the database or cache is unreachable, not a bug of ours."""
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                          sqlalchemy.exc.TimeoutError, ConnectionError, StorageTimeout)):
        return True
    if _is_cluster_unavailable(error):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            code = error.orig.args[0] if error.orig is not None and error.orig.args else None
            if code in MYSQL_UNAVAILABLE_CODES:
                return True
            return any(text in str(error.orig).lower() for text in SQLITE_UNAVAILABLE_MESSAGES)
    return False
