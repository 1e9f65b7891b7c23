"""Which failures of the database or the cache mean "unreachable now" (503), not a bug (500)."""

from __future__ import annotations

import redis.exceptions
import sqlalchemy.exc

# MySQL client errors meaning "the server is not reachable now": can't connect
# (2002, 2003), gone away or lost (2006, 2013), too many connections (1040).
MYSQL_UNAVAILABLE_CODES = {1040, 2002, 2003, 2006, 2013}
SQLITE_UNAVAILABLE_MESSAGES = ("unable to open database", "database is locked", "disk i/o error")


def is_storage_unavailable(error: BaseException) -> bool:
    """Whether an error means the database or cache is unreachable, not a bug of ours."""
    if isinstance(error, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                          sqlalchemy.exc.TimeoutError, ConnectionError)):
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
