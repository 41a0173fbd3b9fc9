"""The versions of each establishment's mapping (SPEC §10.1), within one transaction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import desc, insert, select
from sqlalchemy.engine import Connection, Row

from rorfeed.state.schema import mapping_versions_t


def digest(content: str) -> str:
    """The SHA-256 (hex) that tells two versions of a mapping apart."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MappingVersion:
    id: int
    finess: str
    at: datetime
    actor: str
    reason: str
    digest: str
    content: str


class MappingVersions:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, finess: str, content: str, at: datetime, actor: str, reason: str) -> int:
        result = self._conn.execute(
            insert(mapping_versions_t).values(
                finess=finess,
                at=at,
                actor=actor,
                reason=reason,
                digest=digest(content),
                content=content,
            )
        )
        key = result.inserted_primary_key
        assert key is not None  # noqa: S101 - an insert always has one
        return int(key[0])

    def keep(self, finess: str, content: str, at: datetime, actor: str, reason: str) -> bool:
        """Add `content` unless it is already the newest version; True when added."""
        # Only the digest is read: a cycle asks this every hour of a mapping that rarely changes.
        q = (
            select(mapping_versions_t.c.digest)
            .where(mapping_versions_t.c.finess == finess)
            .order_by(desc(mapping_versions_t.c.id))
            .limit(1)
        )
        if self._conn.execute(q).scalar_one_or_none() == digest(content):
            return False
        self.add(finess, content, at, actor, reason)
        return True

    def newest(self, finess: str) -> MappingVersion | None:
        q = (
            select(mapping_versions_t)
            .where(mapping_versions_t.c.finess == finess)
            .order_by(desc(mapping_versions_t.c.id))
            .limit(1)
        )
        row = self._conn.execute(q).first()
        return None if row is None else _version(row)

    def list(self, finess: str) -> list[MappingVersion]:
        """Every version of `finess`'s mapping, newest first."""
        q = (
            select(mapping_versions_t)
            .where(mapping_versions_t.c.finess == finess)
            .order_by(desc(mapping_versions_t.c.id))
        )
        return [_version(r) for r in self._conn.execute(q)]

    def get(self, finess: str, version_id: int) -> MappingVersion | None:
        q = select(mapping_versions_t).where(
            mapping_versions_t.c.finess == finess, mapping_versions_t.c.id == version_id
        )
        row = self._conn.execute(q).first()
        return None if row is None else _version(row)


def _version(row: Row[tuple[object, ...]]) -> MappingVersion:
    m = row._mapping
    return MappingVersion(
        int(m["id"]),
        str(m["finess"]),
        m["at"],
        str(m["actor"]),
        str(m["reason"]),
        str(m["digest"]),
        str(m["content"]),
    )
