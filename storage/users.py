"""Users: the profile each one's latest launch carried."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.engine import DatabaseEngine, bounded, retried
from storage.models import User
from storage.records import Profile, default_profile


class UserStore(DatabaseEngine):
    """Users' stored profiles."""

    @bounded
    @retried
    async def save_profiles(self, launches: Sequence[tuple[int, str | None, str | None]]) -> list[Profile]:
        """Store the profiles launches carried (user, name or None, avatar or None; latest wins, a launch
        without one keeps what is stored) and return the stored one of each, in one read and, if anything
        changed, one write transaction for all of them.

        A burst of first-time users (a Mini App featured in VK's catalog)
        then costs the database a few transactions per batch instead of two
        per user, each waiting for the pool.
        """
        ids = sorted({user_id for user_id, _, _ in launches})
        async with self._read() as session:
            stored = await self._profiles_of(session, ids)
        wanted: dict[int, dict[str, str]] = {}  # user → the fields a launch changes, the latest launch last
        for user_id, name, avatar in launches:
            current = stored.get(user_id)
            if current is not None and current.kept_by(name, avatar):
                continue
            changes = wanted.setdefault(user_id, {})
            changes.update({key: value for key, value in (("name", name), ("avatar", avatar)) if value})
        if wanted:
            # One upsert per shape of change (which fields it sets): at most four statements.
            shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for user_id, changes in wanted.items():
                default = default_profile(user_id)
                values = {"id": user_id, "name": default.name, "avatar": default.avatar, **changes}
                shapes.setdefault(tuple(sorted(changes)), []).append(values)
            async with self._write() as session:
                for changed, rows in shapes.items():
                    await session.execute(self._upsert(rows, changed))
                stored.update(await self._profiles_of(session, sorted(wanted)))
        return [stored[user_id] for user_id, _, _ in launches]

    @staticmethod
    async def _profiles_of(session: Any, user_ids: Sequence[int]) -> dict[int, Profile]:
        rows = await session.execute(select(User.id, User.name, User.avatar).where(User.id.in_(user_ids)))
        return {row.id: Profile(name=row.name, avatar=row.avatar) for row in rows}

    def _upsert(self, rows: list[dict[str, Any]], changed: tuple[str, ...]) -> Any:
        """INSERT the rows; a row whose user exists sets only the ``changed`` fields (spelled per dialect)."""
        if self.is_sqlite:
            statement = sqlite_insert(User).values(rows)
            if not changed:
                return statement.on_conflict_do_nothing()
            return statement.on_conflict_do_update(
                index_elements=[User.id], set_={field: statement.excluded[field] for field in changed}
            )
        statement = mysql_insert(User).values(rows)
        return statement.on_duplicate_key_update(
            {field: statement.inserted[field] for field in changed} or {"id": statement.inserted.id}
        )

    @bounded
    async def profile(self, user_id: int) -> Profile | None:
        """The stored profile of a user, if they ever connected."""
        async with self._read() as session:
            user = await session.get(User, user_id)
        return None if user is None else Profile(name=user.name, avatar=user.avatar)
