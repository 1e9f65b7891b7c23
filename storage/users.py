"""Users: the profile each one's latest launch carried."""

from __future__ import annotations

from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.engine import DatabaseEngine, bounded, retried
from storage.models import User
from storage.records import Profile, default_profile


class UserStore(DatabaseEngine):
    """Users' stored profiles."""

    @bounded
    @retried
    async def save_profile(self, user_id: int, name: str | None, avatar: str | None) -> Profile:
        """Store the profile a launch carried (latest wins) and return the stored one."""
        async with self._read() as session:
            user = await session.get(User, user_id)
        if user is not None and name in (None, user.name) and avatar in (None, user.avatar):
            # Most connections are reconnects with the same profile: no write.
            return Profile(name=user.name, avatar=user.avatar)
        default = default_profile(user_id)
        values = {"id": user_id, "name": name or default.name, "avatar": avatar or default.avatar}
        # A launch without a profile keeps the stored one.
        changes = {key: value for key, value in (("name", name), ("avatar", avatar)) if value}
        # Upsert is spelled differently by each dialect.
        if self.is_sqlite:
            statement = sqlite_insert(User).values(values)
            statement = (
                statement.on_conflict_do_update(index_elements=[User.id], set_=changes)
                if changes else statement.on_conflict_do_nothing()
            )
        else:
            statement = mysql_insert(User).values(values)
            statement = statement.on_duplicate_key_update(changes or {"id": statement.inserted.id})
        async with self._write() as session:
            await session.execute(statement)
            user = await session.get(User, user_id)
            return Profile(name=user.name, avatar=user.avatar)

    @bounded
    async def profile(self, user_id: int) -> Profile | None:
        """The stored profile of a user, if they ever connected."""
        async with self._read() as session:
            user = await session.get(User, user_id)
        return None if user is None else Profile(name=user.name, avatar=user.avatar)
