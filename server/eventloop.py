"""The asyncio event loop a process runs on (setting ``event_loop``).

``uvloop`` (libuv underneath) by default: every Redis command, MySQL
statement and timer costs less CPU on it than on the standard loop, which
the benchmarks measure side by side (docs/BENCHMARKS.md; ``--targets
mariadb,mariadb@asyncio``).
``asyncio`` selects the standard loop; so does a platform uvloop does not
support, with a warning. Tornado, aiomysql and redis-py run on either.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine, TypeVar

log = logging.getLogger("chat")

T = TypeVar("T")
EVENT_LOOPS = ("uvloop", "asyncio")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What creates the loop named by the setting; ValueError for a name not in EVENT_LOOPS."""
    if name not in EVENT_LOOPS:
        raise ValueError(f"setting event_loop must be one of {', '.join(EVENT_LOOPS)}, got {name!r}")
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: running on the standard asyncio loop")
        else:
            return uvloop.new_event_loop
    # Not asyncio.new_event_loop: that asks the current policy, which may be uvloop's.
    return asyncio.DefaultEventLoopPolicy().new_event_loop


def run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """``asyncio.run`` on the configured loop."""
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(main)
