"""Alembic migrations, applied at start-up by :func:`storage.database.Database.migrate`."""
