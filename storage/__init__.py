"""Persistence: the database (system of record) and the cache (rebuildable)."""
