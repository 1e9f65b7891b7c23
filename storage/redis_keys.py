"""Redis key names, and which keys share a hash slot.

On a Redis Cluster a Lua script (and a MULTI, or a command of several keys)
may only touch keys of one hash slot. A key's slot is that of its hash tag,
the text between its first ``{`` and the next ``}``, or of the whole name if
it has none. So the names say what must stay together:

- The bus's log and what its scripts change in the same step (each chat's
  head and held-back events, the viewers, the views each process holds) and
  the epoch that names the log's history share the tag ``{bus}``: one slot,
  one node. One ordered log is one place; every append is one atomic step
  there.
- The cache is per user (socket ids) and per conversation (unread
  counters); each of those keys is tagged with its owner, so they spread
  over the cluster's nodes.
- Keys only ever touched one at a time (socket records, send-rate buckets,
  heartbeats, the shared settings) keep plain names: Redis spreads them by
  their whole name.

On a single Redis the tags are just characters in the names: one code path.
"""

from __future__ import annotations

BUS_TAG = "bus"


def slot_key(prefix: str, tag: str, name: str) -> str:
    """``<prefix>{<tag>}:<name>``: a key in the hash slot of ``tag``, under the configured prefix."""
    return f"{prefix}{{{tag}}}:{name}"


def checked_prefix(prefix: str) -> str:
    """The key prefix, refused if it holds a brace: its own hash tag would put every key in one slot."""
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"setting redis_prefix must not contain '{{' or '}}' (Redis Cluster hash tags), got {prefix!r}")
    return prefix
