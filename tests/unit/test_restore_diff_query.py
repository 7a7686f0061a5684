"""Backups in use without Kafka: restore, diff, SQL over every backup, and open formats.

The oracle is a real SQLite primary. Each cut copies the primary's rows into held replica
shards (exactly what replication holds at a marker) and runs the snapshotter, so what a
restore, a diff or a query returns can be compared with the primary at that cut.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import avro.datafile
import avro.io
import duckdb
import fastavro
import pytest

from backups.catalog import Backup
from backups.readers import restore as restore_module
from backups.readers.diff import diff_backups, summary_lines
from backups.readers.query import QueryError, check_read_only, run_query, run_query_all
from backups.readers.restore import RestoreError, restore_backup
from consumers.replica import Shard, shard_path
from consumers.snapshotter import CutPlan, write_backup
from cutline import cli
from cutline.errors import ConfigError
from producers.sqlite_changelog import describe_table, quote_identifier
from schemas.records import ConsistencyMarker

SOURCE = "inuse"
PARTITIONS = 3
SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL,
                       rate REAL, avatar BLOB);
CREATE TABLE misc (id INTEGER PRIMARY KEY, qty INTEGER, price NUMERIC, stamp DATETIME,
                   flag BOOLEAN);
CREATE TABLE "order lines" (order_id TEXT, line INTEGER, item BLOB,
                            PRIMARY KEY (line, order_id)) WITHOUT ROWID;
CREATE TABLE notes (id INTEGER PRIMARY KEY, anything);
"""
TABLES = ["accounts", "misc", "order lines"]

Typed = dict[str, list[tuple[Any, ...]]]


def columns_of(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({quote_identifier(table)})")]


def typed_rows(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Every row with each value's SQLite storage class: value and typeof() side by side."""
    parts = []
    for c in columns_of(conn, table):
        q = quote_identifier(c)
        parts += [q, f"typeof({q})"]
    sql = f"SELECT {', '.join(parts)} FROM {quote_identifier(table)}"
    return sorted(conn.execute(sql).fetchall(), key=repr)


def table_info(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"PRAGMA table_info({quote_identifier(table)})").fetchall()


class History:
    """A SQLite primary whose cuts become backups through held shards and the snapshotter."""

    def __init__(self, root: Path, *, full_every: int = 1):
        self.root = root
        self.full_every = full_every
        self.primary = sqlite3.connect(root / "primary.sqlite", isolation_level=None)
        self.primary.executescript(SCHEMA)
        self.replica = root / "replica"
        self.backups = root / "backups"
        self.shards = [Shard(shard_path(self.replica, SOURCE, p), p) for p in range(PARTITIONS)]
        self.offset = 0
        self.states: dict[int, Typed] = {}
        self.published: dict[int, Backup] = {}

    def execute(self, sql: str, params: tuple = ()) -> None:
        self.primary.execute(sql, params)

    def cut(self, tables: list[str] = TABLES) -> Backup:
        marker_id = len(self.states) + 1
        self.offset += 10
        definitions = [describe_table(self.primary, SOURCE, t) for t in tables]
        marker = ConsistencyMarker(
            SOURCE,
            marker_id,
            1_764_000_000_000_000 + marker_id * 1_000_000,
            1,
            PARTITIONS,
            (0,) * PARTITIONS,
            tuple(tables),
        )
        for p, shard in enumerate(self.shards):
            shard.release()
            for d in definitions:
                shard.define(d)
            shard.begin()
            for d in definitions:
                table = quote_identifier(d.table)
                shard.conn.execute(f"DELETE FROM {table}")
                names = ", ".join(quote_identifier(c) for c in d.column_names)
                marks = ", ".join("?" for _ in d.column_names)
                for row in self.primary.execute(f"SELECT {names} FROM {table}"):
                    if zlib.crc32(repr(row[0]).encode()) % PARTITIONS == p:
                        shard.conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", row)
            shard.commit(self.offset - 1)
            shard.reach_marker(marker, self.offset, hold=True)
        plan = CutPlan(
            SOURCE,
            marker_id,
            marker.t1_us,
            PARTITIONS,
            dict.fromkeys(range(PARTITIONS), self.offset),
            tuple(tables),
        )
        backup = write_backup(
            self.replica, self.backups, plan, writer="unit-test", full_every=self.full_every
        )
        self.states[marker_id] = {t: typed_rows(self.primary, t) for t in tables}
        self.published[marker_id] = backup
        return backup

    def close(self) -> None:
        for shard in self.shards:
            shard.close()
        self.primary.close()


def fill(history: History) -> None:
    """Values of every storage class, including ones outside their column's declared type."""
    history.primary.executemany(
        "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
        [(i, f"owner {i} ✓ 'q'", 1000 + i, i / 3, bytes([i, 0, 255])) for i in range(1, 21)]
        + [(21, "big", 2**62, 2, None), (22, "", -(2**63), 1e300, b"")],
    )
    history.primary.executemany(
        "INSERT INTO misc VALUES (?, ?, ?, ?, ?)",
        [
            (1, 5, 2, "2026-01-01", 1),
            (2, "n/a", 2.5, 1_700_000_000, 0),
            (3, None, "cheap", None, None),
            (4, -7, 10, 3.5, 1),
        ],
    )
    history.primary.executemany(
        'INSERT INTO "order lines" VALUES (?, ?, ?)',
        [(f"o-{i // 3}", i % 3, bytes([i])) for i in range(9)],
    )


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path)
    fill(h)
    yield h
    h.close()


def restored(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


# -- restore ---------------------------------------------------------------------------------


def test_restore_equals_the_primary_at_the_cut_with_storage_classes(history, tmp_path):
    backup = history.cut()
    history.execute("UPDATE accounts SET balance = 0")  # after the cut: not in the backup
    target = tmp_path / "restored.sqlite"
    result = restore_backup(backup, target)

    assert result.summary()["tables"] == {t: len(history.states[1][t]) for t in TABLES}
    conn = restored(target)
    try:
        for table in TABLES:
            assert typed_rows(conn, table) == history.states[1][table], table
            assert table_info(conn, table) == table_info(history.primary, table), table
        ddl = "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name = ?"
        for table in TABLES:
            assert (
                conn.execute(ddl, (table,)).fetchall()
                == history.primary.execute(ddl, (table,)).fetchall()
            )
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert [p.name for p in tmp_path.iterdir() if "cutline-restore" in p.name] == []


def test_restore_of_each_backup_of_an_incremental_chain(tmp_path):
    history = History(tmp_path, full_every=3)
    try:
        fill(history)
        for step in range(5):
            history.execute(
                "UPDATE accounts SET balance = balance + ? WHERE id % 3 = ?", (7, step % 3)
            )
            history.execute("DELETE FROM accounts WHERE id = ?", (step + 1,))
            history.execute(
                "INSERT INTO accounts VALUES (?, 'new', ?, NULL, x'01')", (100 + step, step)
            )
            history.execute(
                "UPDATE misc SET qty = ? WHERE id = 1", (f"q{step}" if step % 2 else step,)
            )
            history.execute('DELETE FROM "order lines" WHERE line = ?', (step % 3,))
            history.cut()
        kinds = [history.published[m].kind for m in sorted(history.published)]
        assert kinds.count("incremental") >= 2, kinds
        for marker_id, backup in history.published.items():
            target = tmp_path / f"restored-{marker_id}.sqlite"
            restore_backup(backup, target)
            conn = restored(target)
            try:
                for table in TABLES:
                    assert typed_rows(conn, table) == history.states[marker_id][table], (
                        marker_id,
                        table,
                    )
            finally:
                conn.close()
    finally:
        history.close()


def test_restore_a_subset_of_tables(history, tmp_path):
    backup = history.cut()
    target = tmp_path / "subset.sqlite"
    restore_backup(backup, target, tables=["order lines", "accounts"])
    conn = restored(target)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert names == {"order lines", "accounts"}
        assert typed_rows(conn, "order lines") == history.states[1]["order lines"]
    finally:
        conn.close()


def test_restore_unknown_table_names_the_tables_there(history, tmp_path):
    backup = history.cut()
    with pytest.raises(ConfigError, match=r"no table 'nope'.*tables there: accounts, misc"):
        restore_backup(backup, tmp_path / "x.sqlite", tables=["accounts", "nope"])
    assert not (tmp_path / "x.sqlite").exists()


def test_restore_refuses_an_existing_file_unless_forced(history, tmp_path):
    backup = history.cut()
    target = tmp_path / "taken.sqlite"
    target.write_bytes(b"precious")
    with pytest.raises(ConfigError, match=r"already exists.*--force"):
        restore_backup(backup, target)
    assert target.read_bytes() == b"precious"

    Path(f"{target}-wal").write_bytes(b"stale wal of the old file")
    restore_backup(backup, target, force=True)
    assert not Path(f"{target}-wal").exists(), "a stale WAL would be applied to the new file"
    conn = restored(target)
    try:
        assert typed_rows(conn, "accounts") == history.states[1]["accounts"]
    finally:
        conn.close()


def test_restore_refuses_a_backup_that_fails_verification(history, tmp_path):
    backup = history.cut()
    avro_file = backup.avro_path("misc")
    data = bytearray(avro_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    avro_file.write_bytes(bytes(data))
    target = tmp_path / "bad.sqlite"
    with pytest.raises(RestoreError, match="failed verification") as caught:
        restore_backup(backup, target)
    assert "avro/misc.avro" in str(caught.value)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "cutline-restore" in p.name] == []


def test_a_failure_midway_leaves_nothing_at_the_target(history, tmp_path, monkeypatch):
    backup = history.cut()
    real = restore_module._restore_table
    calls = []

    def failing(source, out, backup_, table, ddl, progress):
        calls.append(table)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return real(source, out, backup_, table, ddl, progress)

    monkeypatch.setattr(restore_module, "_restore_table", failing)
    target = tmp_path / "half.sqlite"
    with pytest.raises(RestoreError, match="simulated"):
        restore_backup(backup, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "cutline-restore" in p.name] == []


def test_restore_to_a_file_name_near_the_length_limit(history, tmp_path):
    """The temp file beside --to must fit the 255-byte name limit too."""
    backup = history.cut()
    target = tmp_path / ("r" * 240 + ".sqlite")
    result = restore_backup(backup, target)
    assert target.is_file()
    assert result.summary()["tables"]["accounts"] == 22


def test_restore_that_cannot_create_its_file_says_what_to_do(history, tmp_path, monkeypatch):
    backup = history.cut()

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(restore_module.sqlite3, "connect", refuse)
    target = tmp_path / "r.sqlite"
    with pytest.raises(RestoreError, match=r"check that .* is writable and has free space"):
        restore_backup(backup, target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if "cutline-restore" in p.name] == []


def test_backup_times_are_instants_whatever_the_local_time_zone(history, monkeypatch):
    """_cutline_backup's t1 and t2 are the manifest's instants, also when the process
    writing the backup runs in another time zone than UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        backup = history.cut()
    finally:
        monkeypatch.undo()
        time.tzset()
    conn = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        stored = conn.execute("SELECT epoch_us(t1), epoch_us(t2) FROM _cutline_backup").fetchall()
    finally:
        conn.close()
    assert stored == [(backup.t1_us, backup.manifest["t2_us"])]


def test_restore_reports_progress_per_table(history, tmp_path, monkeypatch):
    backup = history.cut()
    monkeypatch.setattr(restore_module, "PROGRESS_EVERY_ROWS", 5)
    monkeypatch.setattr(restore_module, "CHUNK_ROWS", 5)
    messages: list[str] = []
    restore_backup(backup, tmp_path / "p.sqlite", progress=messages.append)
    assert "  accounts: 10/22 rows" in messages
    assert "  accounts: 22 rows" in messages
    assert messages[-1].startswith("restored backup 1 (the primary at ")


def test_a_column_the_backup_kept_as_text_comes_back_as_text(tmp_path):
    """A column without declared type holding integers and text is kept as text in the
    backup (nothing dropped); no affinity can tell the integer apart on the way back."""
    history = History(tmp_path)
    try:
        history.execute("INSERT INTO notes VALUES (1, 42), (2, 'x'), (3, 1.5)")
        backup = history.cut(["notes"])
        restore_backup(backup, tmp_path / "notes.sqlite")
        conn = restored(tmp_path / "notes.sqlite")
        try:
            assert typed_rows(conn, "notes") == [
                (1, "integer", "42", "text"),
                (2, "integer", "x", "text"),
                (3, "integer", "1.5", "text"),
            ]
        finally:
            conn.close()
    finally:
        history.close()


def test_cli_restore_exit_statuses(history, tmp_path, capsys):
    history.cut()
    common = ["--backups", str(history.backups), "--source", SOURCE, "--marker", "1"]
    target = tmp_path / "cli.sqlite"
    assert cli.main(["restore", *common, "--to", str(target), "--tables", "misc"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tables"] == {"misc": 4} and summary["marker_id"] == 1

    with pytest.raises(SystemExit) as exited:
        cli.main(["restore", *common, "--to", str(tmp_path / "y.sqlite"), "--tables", "zz"])
    assert exited.value.code == 2
    assert "tables there: accounts, misc, order lines" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exited:
        cli.main(["restore", *common, "--to", str(target)])
    assert exited.value.code == 2

    manifest = history.published[1].path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"][0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    assert cli.main(["restore", *common, "--to", str(tmp_path / "z.sqlite")]) == 1
    err = capsys.readouterr().err
    assert "failed verification" in err and "SHA-256" in err
    assert not (tmp_path / "z.sqlite").exists()


# -- diff ------------------------------------------------------------------------------------


def test_diff_reports_added_removed_and_changed_rows_by_key(history):
    first = history.cut()
    history.execute("DELETE FROM accounts WHERE id = 2")
    history.execute("UPDATE accounts SET balance = 1, avatar = x'ab' WHERE id = 3")
    history.execute("INSERT INTO accounts VALUES (50, 'fifty', 50, 0.5, NULL)")
    history.execute("UPDATE accounts SET id = 60 WHERE id = 4")  # a key change: remove + add
    history.execute("UPDATE \"order lines\" SET item = x'ff' WHERE order_id = 'o-1' AND line = 2")
    second = history.cut()

    diff = diff_backups(first, second).as_json()
    assert diff["from"] == {"marker_id": 1, "t1": first.t1}
    assert diff["to"] == {"marker_id": 2, "t1": second.t1}
    accounts = diff["tables"]["accounts"]
    assert [r["id"] for r in accounts["added"]] == [50, 60]
    assert [r["id"] for r in accounts["removed"]] == [2, 4]
    assert accounts["removed"][0] == {
        "id": 2, "owner": "owner 2 ✓ 'q'", "balance": 1002, "rate": 2 / 3, "avatar": b"\x02\x00\xff"
    }  # fmt: skip
    assert accounts["changed"] == [
        {
            "key": {"id": 3},
            "before": {"id": 3, "owner": "owner 3 ✓ 'q'", "balance": 1003, "rate": 1.0,
                       "avatar": b"\x03\x00\xff"},
            "after": {"id": 3, "owner": "owner 3 ✓ 'q'", "balance": 1, "rate": 1.0,
                      "avatar": b"\xab"},
        }
    ]  # fmt: skip
    lines = diff["tables"]["order lines"]
    assert lines["added"] == lines["removed"] == []
    assert [c["key"] for c in lines["changed"]] == [{"line": 2, "order_id": "o-1"}]
    assert diff["tables"]["misc"] == {"added": [], "removed": [], "changed": []}

    reverse = diff_backups(second, first).as_json()["tables"]["accounts"]
    assert [r["id"] for r in reverse["added"]] == [2, 4]
    assert reverse["changed"][0]["before"]["balance"] == 1

    text = list(summary_lines(diff_backups(first, second)))
    assert "accounts: 2 added, 2 removed, 1 changed" in text
    assert "  ~ {id: 3}: balance: 1003 -> 1, avatar: x'0300ff' -> x'ab'" in text


def test_diff_ignores_a_backup_type_change_of_an_unchanged_value(history):
    history.execute("UPDATE misc SET qty = 9 WHERE id = 2")  # qty: integers only
    first = history.cut()
    history.execute("UPDATE misc SET qty = 'lots' WHERE id = 3")  # now text too
    second = history.cut()
    types = [b.tables["misc"]["columns"][1]["type"] for b in (first, second)]
    assert types == ["BIGINT", "VARCHAR"]
    misc = diff_backups(first, second).as_json()["tables"]["misc"]
    assert misc["added"] == misc["removed"] == []
    assert [(c["key"], c["before"]["qty"], c["after"]["qty"]) for c in misc["changed"]] == [
        ({"id": 3}, None, "lots")
    ]


def test_diff_text_shows_only_the_values_that_changed_across_a_type_change(history):
    history.execute("UPDATE misc SET qty = 9 WHERE id = 2")  # qty: integers only
    first = history.cut()
    history.execute("UPDATE misc SET qty = 'lots' WHERE id = 3")  # qty becomes text
    history.execute("UPDATE misc SET flag = 0 WHERE id = 1")  # qty stays 5 (now '5')
    second = history.cut()
    assert [b.tables["misc"]["columns"][1]["type"] for b in (first, second)] == [
        "BIGINT",
        "VARCHAR",
    ]
    text = list(summary_lines(diff_backups(first, second, table="misc")))
    assert "misc: 0 added, 0 removed, 2 changed" in text
    assert "  ~ {id: 1}: flag: 1 -> 0" in text
    assert "  ~ {id: 3}: qty: NULL -> 'lots'" in text


def test_diff_of_a_table_in_one_backup_only(history):
    first = history.cut(["accounts"])
    second = history.cut(["accounts", "misc"])
    diff = diff_backups(first, second).as_json()["tables"]
    assert diff["misc"]["only_in"] == "to"
    assert [r["id"] for r in diff["misc"]["added"]] == [1, 2, 3, 4]
    assert "only_in" not in diff["accounts"]
    back = diff_backups(second, first).as_json()["tables"]["misc"]
    assert back["only_in"] == "from" and len(back["removed"]) == 4
    text = list(summary_lines(diff_backups(first, second, table="misc")))
    assert text[1] == "misc: only in backup 2 (new table): 4 added, 0 removed, 0 changed"


def test_diff_compares_rows_whole_where_keys_repeat(tmp_path):
    history = History(tmp_path)
    try:
        history.execute("CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT)")
        history.execute("INSERT INTO codes VALUES (NULL, 'a'), (NULL, 'a'), ('k', 'b')")
        first = history.cut(["codes"])
        history.execute("DELETE FROM codes WHERE rowid = (SELECT min(rowid) FROM codes)")
        history.execute("INSERT INTO codes VALUES (NULL, 'c')")
        history.execute("UPDATE codes SET label = 'B' WHERE code = 'k'")
        second = history.cut(["codes"])
        codes = diff_backups(first, second).as_json()["tables"]["codes"]
        assert codes["removed"] == [{"code": None, "label": "a"}]
        assert codes["added"] == [{"code": None, "label": "c"}]
        assert codes["changed"] == [
            {
                "key": {"code": "k"},
                "before": {"code": "k", "label": "b"},
                "after": {"code": "k", "label": "B"},
            }
        ]
    finally:
        history.close()


@pytest.mark.parametrize("seed", range(8))
def test_setting_aside_the_rows_both_backups_hold_changes_no_diff(tmp_path, seed, monkeypatch):
    """The diff with DuckDB taking out common rows first equals the diff of every row, on
    random changes to a keyed table and to a table whose NULL keys repeat (its rows are
    compared whole, as a multiset); and the common rows never reach Python."""
    import random

    from backups.readers import diff as diff_module

    rng = random.Random(seed)
    history = History(tmp_path)
    try:
        history.execute("CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT)")
        history.execute("CREATE TABLE keyed (id INTEGER PRIMARY KEY, v TEXT, w REAL)")
        for i in range(60):
            history.execute("INSERT INTO keyed VALUES (?, ?, ?)", (i, f"v{i % 7}", i / 4))
            code = None if rng.random() < 0.3 else f"c{i}"
            history.execute("INSERT INTO codes VALUES (?, ?)", (code, f"l{i % 3}"))
        tables = ["codes", "keyed"]
        first = history.cut(tables)
        for _ in range(25):
            table = rng.choice(tables)
            action = rng.choice(["insert", "delete", "update"])
            if action == "delete":
                history.execute(
                    f"DELETE FROM {table} WHERE rowid = "
                    f"(SELECT rowid FROM {table} ORDER BY random() LIMIT 1)"
                )
            elif action == "update":
                column = {"codes": "label", "keyed": "v"}[table]
                history.execute(
                    f"UPDATE {table} SET {column} = ? WHERE rowid = "
                    f"(SELECT rowid FROM {table} ORDER BY random() LIMIT 1)",
                    (f"new{rng.randint(0, 3)}",),
                )
            elif table == "keyed":
                history.execute(
                    "INSERT OR REPLACE INTO keyed VALUES (?, 'in', 0.5)", (rng.randint(0, 90),)
                )
            else:
                history.execute("INSERT INTO codes VALUES (NULL, 'l1')")  # maybe a repeat
        second = history.cut(tables)
        fetched: list[int] = []
        real_rows = diff_module._rows

        def counted(conn, backup, table, side, rest=""):
            result = real_rows(conn, backup, table, side, rest)
            fetched.append(len(result.rows))
            return result

        monkeypatch.setattr(diff_module, "_rows", counted)
        narrowed = diff_backups(first, second).as_json()
        assert sum(fetched) <= 2 * 25 + 10  # only what changed (a REPLACE is two rows)
        monkeypatch.setattr(diff_module, "_comparable", lambda a, b: False)
        assert narrowed == diff_backups(first, second).as_json()
    finally:
        history.close()


def test_diff_unknown_table_names_the_tables(history):
    first = history.cut()
    with pytest.raises(ConfigError, match="tables there: accounts, misc, order lines"):
        diff_backups(first, first, table="nope")


def test_cli_diff_json_and_text(history, capsys):
    history.cut()
    history.execute("DELETE FROM misc WHERE id = 3")
    history.cut()
    common = ["--backups", str(history.backups), "--source", SOURCE]
    assert cli.main(["diff", *common, "1", "2", "--table", "misc", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["tables"]) == ["misc"]
    assert out["tables"]["misc"]["removed"] == [
        {"id": 3, "qty": None, "price": "cheap", "stamp": None, "flag": None}
    ]
    assert cli.main(["diff", *common, "1", "2"]) == 0
    text = capsys.readouterr().out
    assert "misc: 0 added, 1 removed, 0 changed" in text
    assert "accounts: 0 added, 0 removed, 0 changed" in text
    assert cli.main(["diff", *common, "1", "9"]) == 1
    assert "no backup for marker 9" in capsys.readouterr().err


# -- query -----------------------------------------------------------------------------------


def test_query_all_follows_an_aggregate_and_a_row_through_time(history):
    sums = []
    for step in range(3):
        history.execute("UPDATE accounts SET balance = balance + 10 WHERE id <= ?", (step + 1,))
        history.cut()
        sums.append(history.primary.execute("SELECT sum(balance) FROM accounts").fetchone()[0])
    backups = list(history.published.values())
    columns, rows = run_query_all(
        backups, "SELECT marker_id, sum(balance) FROM accounts GROUP BY ALL ORDER BY marker_id"
    )
    assert rows == [(1, sums[0]), (2, sums[1]), (3, sums[2])]
    columns, rows = run_query_all(
        backups, "SELECT marker_id, t1, balance FROM accounts WHERE id = 2 ORDER BY marker_id"
    )
    assert [(r[0], r[1].isoformat(timespec="microseconds"), r[2]) for r in rows] == [
        (b.marker_id, b.t1, 1002 + 10 * min(2, b.marker_id - 1)) for b in backups
    ]
    columns, _ = run_query_all(backups, "SELECT * FROM accounts LIMIT 1")
    assert columns == ["marker_id", "t1", "id", "owner", "balance", "rate", "avatar"]
    _, meta = run_query_all(backups, "SELECT marker_id, source FROM _cutline_backup ORDER BY 1")
    assert meta == [(1, SOURCE), (2, SOURCE), (3, SOURCE)]


def test_query_all_widens_a_column_whose_type_differs_between_backups(history):
    history.execute("UPDATE misc SET qty = 1 WHERE id = 2")
    history.cut()
    history.execute("UPDATE misc SET qty = 'n/a' WHERE id = 2")
    history.cut()
    _, rows = run_query_all(
        list(history.published.values()),
        "SELECT marker_id, qty FROM misc WHERE id = 2 ORDER BY marker_id",
    )
    assert rows == [(1, "1"), (2, "n/a")]


def test_query_all_keeps_a_tables_own_marker_id_column(tmp_path):
    history = History(tmp_path)
    try:
        history.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, marker_id INTEGER)")
        history.execute("INSERT INTO runs VALUES (1, 77)")
        history.cut(["runs"])
        history.cut(["runs"])
        _, rows = run_query_all(
            list(history.published.values()),
            "SELECT _cutline_marker_id, marker_id, t1 IS NOT NULL FROM runs ORDER BY 1",
        )
        assert rows == [(1, 77, True), (2, 77, True)]
    finally:
        history.close()


def test_query_all_over_an_incremental_chain_equals_the_primary(tmp_path):
    history = History(tmp_path, full_every=3)
    try:
        fill(history)
        expected = []
        for step in range(4):
            history.execute("DELETE FROM accounts WHERE id = ?", (step + 1,))
            history.execute("UPDATE accounts SET balance = balance * 2 WHERE id = 20")
            history.cut()
            expected.append(
                (step + 1, *history.primary.execute(
                    "SELECT count(*), sum(balance) FROM accounts"
                ).fetchone())
            )  # fmt: skip
        assert "incremental" in {b.kind for b in history.published.values()}
        _, rows = run_query_all(
            list(history.published.values()),
            "SELECT marker_id, count(*), sum(balance) FROM accounts GROUP BY ALL ORDER BY 1",
        )
        assert rows == expected
    finally:
        history.close()


WRITES = [
    "INSERT INTO accounts VALUES (999, 'x', 0, 0, NULL)",
    "UPDATE accounts SET balance = 0",
    "DELETE FROM accounts",
    "CREATE TABLE t (a INTEGER)",
    "CREATE TEMP TABLE t AS SELECT 1",
    "DROP TABLE accounts",
    "ALTER TABLE accounts ADD COLUMN z INTEGER",
    "ATTACH '{dir}/other.duckdb' AS other",
    "COPY (SELECT * FROM accounts) TO '{dir}/out.csv'",
    "COPY accounts TO '{dir}/out.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{dir}/exported'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "SELECT 1; DELETE FROM accounts",
    "CHECKPOINT; CREATE VIEW v AS SELECT 1",
]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A full backup and an incremental on top of it, shared by the read-only checks."""
    history = History(tmp_path_factory.mktemp("chain"), full_every=3)
    fill(history)
    history.cut()
    history.execute("DELETE FROM accounts WHERE id = 1")
    assert history.cut().kind == "incremental"
    yield history
    history.close()


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("sql", WRITES)
def test_every_kind_of_query_refuses_writes(sql, chain, tmp_path):
    before = _digests(chain.backups)
    statement = sql.format(dir=tmp_path)
    full, incremental = chain.published[1], chain.published[2]
    with pytest.raises(QueryError, match="backups are read-only"):
        run_query(full, statement)
    with pytest.raises(QueryError, match="backups are read-only"):
        run_query(incremental, statement)
    with pytest.raises(QueryError, match="backups are read-only"):
        run_query_all([full, incremental], statement)
    assert _digests(chain.backups) == before
    assert list(tmp_path.iterdir()) == []


def test_reads_of_every_form_are_allowed(history, tmp_path):
    backup = history.cut()
    for sql in [
        "FROM accounts SELECT count(*)",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "DESCRIBE accounts",
        "SHOW TABLES",
        "SUMMARIZE misc",
        "EXPLAIN SELECT * FROM accounts",
        "PRAGMA table_info('accounts')",
        "CALL pragma_version()",
    ]:
        check_read_only(sql)
        columns, rows = run_query(backup, sql)
        assert columns and rows, sql


def test_files_beyond_the_backups_are_out_of_reach(chain, tmp_path):
    """EXPLAIN passes the statement check, but what it runs cannot touch other files."""
    outside = tmp_path / "outside.csv"
    outside.write_text("a,b\n1,2\n")
    target = tmp_path / "sneaky.csv"
    full, incremental = chain.published[1], chain.published[2]
    for run in (
        lambda sql: run_query(full, sql),
        lambda sql: run_query(incremental, sql),
        lambda sql: run_query_all([full, incremental], sql),
    ):
        with pytest.raises(QueryError, match="no other file"):
            run(f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'")
        with pytest.raises(QueryError, match="no other file"):
            run(f"SELECT * FROM read_csv('{outside}')")
    assert not target.exists()


def test_query_times_are_utc_and_sql_errors_say_which_backup(history):
    backup = history.cut()
    _, rows = run_query(backup, "SELECT t1::VARCHAR FROM _cutline_backup")
    assert rows[0][0].endswith("+00")
    with pytest.raises(QueryError, match="SQL error on backup 1"):
        run_query(backup, "SELECT nope FROM accounts")
    with pytest.raises(QueryError, match="no SQL statement"):
        run_query(backup, "  -- nothing")


def test_cli_query_all_is_exclusive_with_marker_and_prints_json(history, capsys):
    history.cut()
    history.cut()
    common = ["query", "--backups", str(history.backups), "--source", SOURCE]
    with pytest.raises(SystemExit) as exited:
        cli.main([*common, "--all", "--marker", "1", "SELECT 1"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    sql = "SELECT marker_id, count(*) AS n FROM misc GROUP BY ALL ORDER BY 1"
    assert cli.main([*common, "--all", "--json", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"marker_id": 1, "n": 4},
        {"marker_id": 2, "n": 4},
    ]
    assert cli.main([*common, "--all", "COPY misc TO 'x.csv'"]) == 1
    assert "backups are read-only" in capsys.readouterr().err


# -- open formats ----------------------------------------------------------------------------


def test_avro_files_read_the_same_with_the_apache_avro_reader(history):
    backup = history.cut()
    conn = duckdb.connect(str(backup.duckdb_path), read_only=True)
    try:
        in_duckdb = {
            t: sorted(conn.execute(f"SELECT * FROM {quote_identifier(t)}").fetchall(), key=repr)
            for t in backup.tables
        }
    finally:
        conn.close()
    for table, info in backup.tables.items():
        with open(backup.avro_path(table), "rb") as f:
            fast = fastavro.reader(f)
            fast_meta = {k: v for k, v in fast.metadata.items() if k.startswith("cutline.")}
            fast_rows = list(fast)
        with open(backup.avro_path(table), "rb") as f:
            apache = avro.datafile.DataFileReader(f, avro.io.DatumReader())
            try:
                apache_meta = {
                    k: v.decode() for k, v in apache.meta.items() if k.startswith("cutline.")
                }
                apache_rows = list(apache)
            finally:
                apache.close()
        assert apache_rows == fast_rows, table
        assert apache_meta == fast_meta, table
        assert apache_meta["cutline.table"] == table
        assert apache_meta["cutline.marker_id"] == "1"
        assert json.loads(apache_meta["cutline.columns"]) == [c["name"] for c in info["columns"]]
        names = [c["avro_field"] for c in info["columns"]]
        as_tuples = sorted((tuple(r[n] for n in names) for r in apache_rows), key=repr)
        assert as_tuples == in_duckdb[table], table
    assert in_duckdb["accounts"] == [row[0::2] for row in history.states[1]["accounts"]]


def test_duckdb_file_opens_in_a_plain_duckdb_connection(history):
    backup = history.cut()
    conn = duckdb.connect(str(backup.path / "backup.duckdb"), read_only=True)
    try:
        rows = sorted(conn.execute("SELECT * FROM accounts").fetchall(), key=repr)
        ddl = dict(conn.execute("SELECT table_name, ddl FROM _cutline_tables").fetchall())
    finally:
        conn.close()
    assert rows == [row[0::2] for row in history.states[1]["accounts"]]
    stored = history.primary.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'order lines'"
    ).fetchone()[0]
    assert ddl["order lines"] == stored
