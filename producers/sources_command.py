"""``cutline sources``: which sources capture a primary, and dropping one that is gone."""

from __future__ import annotations

import json
from pathlib import Path

from cutline.errors import ConfigError
from producers.sources import SOURCES, all_sources, database_id, drop_source, issued_seq
from producers.sqlite_changelog import CHANGES, connect
from producers.write_lock import begin_write


def run_sources(db: Path, *, drop: str | None, as_json: bool, lock_timeout_s: float) -> int:
    conn = connect(db)
    try:
        if drop is not None:
            begin_write(conn, f"dropping source {drop!r}", lock_timeout_s)
            try:
                dropped = drop_source(conn, drop)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if not dropped:
                known = ", ".join(s.source for s in all_sources(conn)) or "none"
                raise ConfigError(f"source {drop!r} does not capture {db}; sources there: {known}")
            print(f"dropped source {drop!r} from {db}; its topics cannot resume on it")
            return 0
        found = all_sources(conn)
        pending = {
            s.source: conn.execute(
                f"SELECT count(*) FROM {CHANGES} WHERE seq > ? "
                "AND (only_source IS NULL OR only_source = ?)",
                (s.cursor_seq, s.source),
            ).fetchone()[0]
            for s in found
        }
        report = {
            "database_id": database_id(conn),
            "issued_seq": issued_seq(conn),
            "sources": [
                {
                    "source": s.source,
                    "tables": list(s.tables),
                    "cursor_seq": s.cursor_seq,
                    "incarnation": s.incarnation,
                    "pending_changes": pending[s.source],
                }
                for s in found
            ],
        }
    finally:
        conn.close()
    if as_json:
        print(json.dumps(report))
    elif not found:
        print(f"no source captures {db} (no {SOURCES} table or no rows in it)")
    else:
        print(f"database {report['database_id']}: change log issued up to {report['issued_seq']}")
        for s in report["sources"]:
            print(
                f"{s['source']}: incarnation {s['incarnation']}, published up to change "
                f"{s['cursor_seq']}, {s['pending_changes']} pending; tables "
                f"{', '.join(s['tables'])}"
            )
    return 0
