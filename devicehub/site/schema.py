"""Versioned SQL migrations, applied at start: ``migrations/NNNN_name.sql`` in order.

A table ``schema_version`` lists each applied file with its SHA-256; a shipped
migration is never edited (a changed file is refused, so an edited one cannot pass
unnoticed). Several collectors starting at once take turns through an advisory lock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: pg_advisory_xact_lock key of the migrations ("dhub" in ASCII)
_LOCK = 0x64687562


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def migrations(directory: Path = MIGRATIONS) -> list[Migration]:
    out = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if m is None:
            raise MigrationError(f"migration file name {path.name!r} is not NNNN_name.sql")
        out.append(Migration(int(m.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in out]
    if versions != list(range(1, len(out) + 1)):
        raise MigrationError(f"migrations must be numbered 1, 2, ... without gaps: {versions}")
    return out


def migrate(conn: Any, directory: Path = MIGRATIONS) -> int:
    """Apply every migration not applied yet (psycopg 3 connection); returns the version."""
    wanted = migrations(directory)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL,"
                     " sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        applied = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT version, name, sha256 FROM schema_version")}
        for m in wanted:
            if m.version in applied:
                if applied[m.version][1] != m.sha256:
                    raise MigrationError(f"migration {m.name} differs from the one applied as version {m.version}"
                                         f" ({applied[m.version][0]}): shipped migrations are never edited")
                continue
            conn.execute(m.sql)
            conn.execute("INSERT INTO schema_version (version, name, sha256) VALUES (%s, %s, %s)",
                         (m.version, m.name, m.sha256))
        newer = [v for v in applied if v > len(wanted)]
        if newer:
            raise MigrationError(f"the database has schema version {max(newer)}, newer than this devicehub "
                                 f"({len(wanted)})")
    return len(wanted)
