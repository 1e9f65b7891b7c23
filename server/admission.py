"""Admission control for WebSocket handshakes: a bounded number in progress, the rest refused at once;
and the per-address cap on open sockets.

A handshake in progress holds storage work (the profile's upsert, the
socket's registration, a resume's replay). Under a storm (every client of a
restarted process reconnecting, a Mini App featured in VK's catalog) an
unbounded number of them would queue for the database pool until they hit
the storage deadline and fail after seconds, each having cost its share. A
handshake beyond ``limit`` is refused before any of that, with a hint of
when to come back (API.md §3): it costs the client one round trip and the
server nothing but the upgrade.
"""

from __future__ import annotations

# The hint given to a refused handshake (server/wire.py's busy_reason); clients add their own jitter (API.md §3).
RETRY_AFTER_SECS = 2


class HandshakeAdmission:
    """At most ``limit`` handshakes in progress in this process (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    def enter(self) -> bool:
        """Take a place; False (and nothing taken) if every place is taken."""
        if self.limit and self.in_progress >= self.limit:
            return False
        self.in_progress += 1
        return True

    def leave(self) -> None:
        self.in_progress -= 1


class AddressCounts:
    """Open sockets per client address in this process, at most ``cap`` each (callers skip it when 0: no cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def take(self, address: str) -> bool:
        """Count one more socket from ``address``; False (and nothing counted) if it holds ``cap`` already."""
        count = self._open.get(address, 0)
        if count >= self.cap:
            return False
        self._open[address] = count + 1
        return True

    def give_back(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)
