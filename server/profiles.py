"""Senders' profiles, for a process that holds none of their sockets."""

from __future__ import annotations

import time

from server.registry import Registry
from storage.database import Database
from storage.records import Profile, default_profile

# Profiles of users whose sockets are on other processes are read again after this long.
PROFILE_MEMORY_SECS = 10.0
PROFILE_MEMORY_SIZE = 10_000


class Profiles:
    """A user's profile: from their socket here, else from the database (remembered briefly).

    A user whose socket is on another process sends through this one again
    and again; a profile changes only when a socket opens, so one read per
    PROFILE_MEMORY_SECS is enough.
    """

    def __init__(self, registry: Registry, database: Database) -> None:
        self.registry = registry
        self.database = database
        self._remembered: dict[int, tuple[Profile, float]] = {}  # user → (profile, until)

    async def of(self, user_id: int) -> Profile:
        profile = self.registry.profile(user_id)
        if profile is not None:
            return profile
        now = time.monotonic()
        remembered = self._remembered.get(user_id)
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        profile = await self.database.profile(user_id) or default_profile(user_id)
        if len(self._remembered) >= PROFILE_MEMORY_SIZE:
            self._remembered.clear()  # crude, and rare: a burst of distinct remote senders
        self._remembered[user_id] = (profile, now + PROFILE_MEMORY_SECS)
        return profile
