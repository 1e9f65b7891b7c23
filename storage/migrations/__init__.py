"""Alembic migrations, applied at start-up by :func:`storage.engine.DatabaseEngine.migrate`."""
