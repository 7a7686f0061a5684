"""Trigger-based change capture on a real SQLite file, marker requests, and the mapping of
change-log rows to operation records and Kafka keys."""

from __future__ import annotations

import math
import random
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from consumers.replica import ApplyError, Shard
from cutline.errors import ConfigError
from producers.markers import format_time, request_marker
from producers.operations import TableLayout, message_key, partition_for, to_operations
from producers.row_images import image_values
from producers.sqlite_changelog import (
    CHANGES,
    KIND_MARKER,
    ChangeRow,
    connect,
    describe_table,
    forget_changes,
    install,
    installed_tables,
    quote_identifier,
    read_changes,
)
from schemas.records import OpType

ODD = 'x"; DROP TABLE y; --'
ODD_Q = '"x""; DROP TABLE y; --"'


def same(a, b) -> bool:
    """Equal value *and* storage class."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def rows_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "primary.sqlite"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.executescript(
        f"""
        CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT, balance REAL);
        CREATE TABLE lines(order_id TEXT, line INTEGER, item, PRIMARY KEY (line, order_id));
        CREATE TABLE notes(id INTEGER PRIMARY KEY, body, n);
        CREATE TABLE {ODD_Q}("first name" TEXT PRIMARY KEY, v);
        CREATE TABLE y(z);
        INSERT INTO accounts VALUES (1, 'ann', 10.5), (2, 'bob', 0.0);
        INSERT INTO lines VALUES ('o1', 1, 'apple'), ('o1', 2, X'00FF');
        INSERT INTO notes(body, n) VALUES ('hello', 1);
        INSERT INTO {ODD_Q} VALUES ('Zoë O''Neil', 3);
        INSERT INTO y VALUES (1);
        """
    )
    setup.close()
    return path


@pytest.fixture
def conn(db_path: Path):
    c = connect(db_path)
    yield c
    c.close()


@pytest.fixture
def app(db_path: Path):
    """A second connection, as the application writing to the primary."""
    c = sqlite3.connect(db_path, isolation_level=None)
    yield c
    c.close()


TABLES = ["accounts", "lines", "notes", ODD]


def layouts(definitions):
    return {d.table: TableLayout.of(d) for d in definitions}


def image(change_image: str) -> list:
    return image_values(change_image)


# -- install ---------------------------------------------------------------------------------


def test_install_describes_keys_and_columns(conn):
    defs = {d.table: d for d in install(conn, "shop", TABLES)}
    assert defs["accounts"].key_columns == ("id",)
    assert defs["accounts"].column_names == ("id", "owner", "balance")
    assert [c.declared_type for c in defs["accounts"].columns] == ["INTEGER", "TEXT", "REAL"]
    # Composite key in key order (line first), not column order.
    assert defs["lines"].key_columns == ("line", "order_id")
    assert defs["notes"].key_columns == ("id",)
    assert defs["notes"].column_names == ("id", "body", "n")
    assert defs[ODD].key_columns == ("first name",)
    assert defs[ODD].column_names == ("first name", "v")
    assert all(d.source == "shop" for d in defs.values())
    assert defs[ODD].ddl.startswith("CREATE TABLE")
    assert installed_tables(conn) == sorted(TABLES)


def test_odd_names_do_not_escape_quoting(conn, app):
    install(conn, "shop", TABLES)
    # The table named like an injection still exists, and so does y.
    names = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {ODD, "y"} <= names
    app.execute(f"INSERT INTO {ODD_Q} VALUES ('a,b', 'c''d')")
    last = read_changes(conn, 0, 1000)[-1]
    assert last.table == ODD
    assert image(last.after) == ["a,b", "c'd"]


def test_existing_rows_are_captured_as_inserts_at_install(conn):
    install(conn, "shop", TABLES)
    changes = read_changes(conn, 0, 1000)
    assert all(c.kind == "I" and c.before is None for c in changes)
    by_table: dict[str, list] = {}
    for c in changes:
        by_table.setdefault(c.table, []).append(image(c.after))
    assert sorted(by_table["accounts"]) == [[1, "ann", 10.5], [2, "bob", 0.0]]
    assert sorted(by_table["lines"], key=repr) == sorted(
        [["o1", 1, "apple"], ["o1", 2, b"\x00\xff"]], key=repr
    )
    assert by_table["notes"] == [[1, "hello", 1]]
    assert by_table[ODD] == [["Zoë O'Neil", 3]]
    assert "y" not in by_table
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_insert_update_delete_produce_change_rows(conn, app):
    install(conn, "shop", TABLES)
    start = read_changes(conn, 0, 1000)[-1].seq
    app.execute("INSERT INTO accounts VALUES (3, 'cy', 1.25)")
    app.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 3")
    app.execute("DELETE FROM accounts WHERE id = 1")
    app.execute("UPDATE notes SET n = 2")
    app.execute("INSERT INTO y VALUES (2)")  # not captured
    changes = read_changes(conn, start, 1000)
    assert [(c.kind, c.table) for c in changes] == [
        ("I", "accounts"),
        ("U", "accounts"),
        ("D", "accounts"),
        ("U", "notes"),
    ]
    ins, upd, dele, upd2 = changes
    assert ins.before is None and image(ins.after) == [3, "cy", 1.25]
    assert image(upd.before) == [3, "cy", 1.25] and image(upd.after) == [3, "cy", 2.25]
    assert image(dele.before) == [1, "ann", 10.5] and dele.after is None
    assert image(upd2.before) == [1, "hello", 1] and image(upd2.after) == [1, "hello", 2]
    assert all(c.at_us > 0 for c in changes)


def test_rolled_back_transactions_leave_no_change_rows(conn, app):
    install(conn, "shop", TABLES)
    before = read_changes(conn, 0, 1000)
    app.execute("BEGIN")
    app.execute("INSERT INTO accounts VALUES (9, 'gone', 1)")
    app.execute("ROLLBACK")
    assert read_changes(conn, 0, 1000) == before


STORAGE_VALUES = [
    None,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1 / 3,
    1e300,
    -1e-300,
    5e-324,
    0.1,
    -2.5,
    1.0,
    float("inf"),
    float("-inf"),
    "",
    "plain",
    "it's, a 'quoted', text",
    "''",
    "NULL",
    "X'00'",
    "1.5",
    "-3",
    "line\nbreak, and\ttab",
    "ünïcødé ✓ \U0001f600",
    b"",
    b"\x00\xff",
    bytes(range(256)),
    b"',",
]


def test_every_storage_class_round_trips_through_literals(conn, app):
    app.execute("CREATE TABLE vals(id INTEGER PRIMARY KEY, a, b, c)")
    install(conn, "shop", ["vals"])
    start = read_changes(conn, 0, 1000)
    start_seq = start[-1].seq if start else 0
    for i, value in enumerate(STORAGE_VALUES):
        app.execute("INSERT INTO vals VALUES (?, ?, ?, ?)", (i, value, value, "tail"))
    changes = read_changes(conn, start_seq, 1000)
    assert len(changes) == len(STORAGE_VALUES)
    for change, value in zip(changes, STORAGE_VALUES, strict=True):
        got = image(change.after)
        assert len(got) == 4, (value, change.after)
        assert same(got[1], value), (value, got[1], change.after)
        assert same(got[2], value)
        assert got[3] == "tail"


def test_randomized_literals_match_sqlite_storage(conn, app):
    rng = random.Random(7)
    alphabet = "ab,'\"X\n é0.eEIN-"

    def value():
        kind = rng.randrange(5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.randint(-(2**63), 2**63 - 1)
        if kind == 2:
            return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10 ** rng.randint(-300, 300)])
        if kind == 3:
            return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))

    app.execute("CREATE TABLE r(id INTEGER PRIMARY KEY, a, b, c)")
    install(conn, "shop", ["r"])
    start_seq = read_changes(conn, 0, 10_000)[-1].seq if read_changes(conn, 0, 10_000) else 0
    rows = [(value(), value(), value()) for _ in range(300)]
    app.executemany("INSERT INTO r(a, b, c) VALUES (?, ?, ?)", rows)
    stored = app.execute("SELECT id, a, b, c FROM r ORDER BY id").fetchall()
    changes = read_changes(conn, start_seq, 10_000)
    parsed = [tuple(image(c.after)) for c in changes]
    assert rows_equal(parsed, stored)


def test_install_is_idempotent(conn):
    install(conn, "shop", TABLES)
    first = read_changes(conn, 0, 1000)
    again = install(conn, "shop", TABLES)
    assert [d.table for d in again] == TABLES
    assert read_changes(conn, 0, 1000) == first


def test_install_adds_new_tables_later_without_recapturing_old(conn, app):
    install(conn, "shop", ["accounts"])
    n_before = len(read_changes(conn, 0, 1000))
    install(conn, "shop", ["accounts", "notes"])
    new = read_changes(conn, 0, 1000)[n_before:]
    assert [(c.kind, c.table) for c in new] == [("I", "notes")]


def test_connect_missing_database_is_config_error(tmp_path):
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(ConfigError, match=r"nope\.sqlite"):
        connect(missing)
    assert not missing.exists()


def test_connect_non_sqlite_file_is_config_error(tmp_path):
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        connect(bogus)


@pytest.mark.parametrize(
    "name", ["shop?1.sqlite", "shop#1.sqlite", "shop%1.sqlite", "shop%3F.sqlite", "a b&c=d.sqlite"]
)
def test_connect_path_with_uri_characters_opens_that_file(tmp_path, name):
    path = tmp_path / name
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY)")
    setup.commit()
    setup.close()
    c = connect(path)
    try:
        names = [r[0] for r in c.execute("SELECT name FROM sqlite_master")]
    finally:
        c.close()
    assert names == ["accounts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_table_error_names_existing_tables(conn):
    install(conn, "shop", ["accounts"])  # creates internal tables too
    with pytest.raises(ConfigError) as info:
        install(conn, "shop", ["acounts"])
    message = str(info.value)
    assert "'acounts'" in message
    for name in ["accounts", "lines", "notes", "y", ODD]:
        assert name in message
    assert "_cutline_" not in message
    assert "sqlite_sequence" not in message


def test_missing_table_error_lists_user_tables_starting_with_sqlite(conn, app):
    app.execute("CREATE TABLE sqlites(a)")
    with pytest.raises(ConfigError) as info:
        install(conn, "shop", ["nope"])
    assert "sqlites" in str(info.value)


def test_capturing_an_internal_table_is_config_error(conn):
    install(conn, "shop", ["accounts"])
    with pytest.raises(ConfigError, match="belongs to cutline"):
        install(conn, "shop", ["_cutline_changes"])


def test_failed_install_rolls_back_everything(conn):
    with pytest.raises(ConfigError):
        install(conn, "shop", ["accounts", "missing"])
    assert installed_tables(conn) == []
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    assert triggers == []


def test_no_tables_is_config_error(conn):
    with pytest.raises(ConfigError, match="--tables"):
        install(conn, "shop", [])


def test_install_again_after_a_layout_change_reinstalls_the_table(conn, app):
    install(conn, "shop", TABLES)
    app.execute("ALTER TABLE accounts ADD COLUMN email TEXT")
    install(conn, "shop", TABLES)
    schema_rows = [c for c in read_changes(conn, 0, 10_000) if c.kind == "S"]
    assert [c.table for c in schema_rows] == ["accounts"]
    assert "email" in (schema_rows[0].after or "") and "email" not in (schema_rows[0].before or "")


# -- markers ---------------------------------------------------------------------------------


def test_request_marker_sits_between_changes_before_and_after(conn, app):
    install(conn, "shop", TABLES)
    app.execute("INSERT INTO accounts VALUES (10, 'before', 1)")
    ticket = request_marker(conn, note="test")
    app.execute("INSERT INTO accounts VALUES (11, 'after', 1)")
    changes = read_changes(conn, 0, 1000)
    marker = [c for c in changes if c.kind == KIND_MARKER]
    assert len(marker) == 1 and marker[0].marker_id == ticket.marker_id
    assert marker[0].at_us == ticket.t1_us
    assert marker[0].table is None and marker[0].before is None and marker[0].after is None
    seq_of = {image(c.after)[1]: c.seq for c in changes if c.table == "accounts" and c.after}
    assert seq_of["before"] < marker[0].seq < seq_of["after"]
    assert all(c.at_us <= ticket.t1_us for c in changes if c.seq < marker[0].seq)


def test_marker_ids_increase_and_ticket_formats_t1(conn):
    install(conn, "shop", ["accounts"])
    a, b = request_marker(conn), request_marker(conn)
    assert b.marker_id == a.marker_id + 1
    assert b.t1_us >= a.t1_us
    assert a.as_json() == {"marker_id": a.marker_id, "t1": format_time(a.t1_us)}
    assert format_time(1_764_065_700_000_001) == "2025-11-25T10:15:00.000001+00:00"


def test_request_marker_without_capture_is_config_error(conn):
    with pytest.raises(ConfigError, match="capture is not installed"):
        request_marker(conn)
    assert (
        conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '_cutline%'").fetchall() == []
    )


def test_read_changes_limit_and_forget(conn, app):
    install(conn, "shop", ["accounts"])
    app.executemany("INSERT INTO accounts VALUES (?, 'x', 0)", [(i,) for i in range(100, 110)])
    all_rows = read_changes(conn, 0, 1000)
    assert read_changes(conn, 0, 3) == all_rows[:3]
    assert read_changes(conn, all_rows[4].seq, 2) == all_rows[5:7]
    forget_changes(conn, all_rows[4].seq)
    assert read_changes(conn, 0, 1000) == all_rows[5:]


# -- to_operations ---------------------------------------------------------------------------


def _changes_for(conn, app, statements):
    defs = install(conn, "shop", TABLES)
    start = read_changes(conn, 0, 1000)[-1].seq
    for sql in statements:
        app.execute(sql)
    return layouts(defs), read_changes(conn, start, 1000)


def test_to_operations_insert_update_delete(conn, app):
    lay, changes = _changes_for(
        conn,
        app,
        [
            "INSERT INTO accounts VALUES (5, 'eve', 3.5)",
            "UPDATE accounts SET owner = 'eva' WHERE id = 5",
            "DELETE FROM accounts WHERE id = 5",
        ],
    )
    ops = [to_operations(c, lay[c.table], "shop") for c in changes]
    assert [len(o) for o in ops] == [1, 1, 1]
    (k1, ins), (k2, upd), (k3, dele) = (o[0] for o in ops)
    assert k1 == k2 == k3 == b"accounts\x1f5"
    assert ins.op is OpType.INSERT and ins.key == {"id": 5} and ins.before is None
    assert ins.after == {"id": 5, "owner": "eve", "balance": 3.5}
    assert upd.op is OpType.UPDATE and upd.before["owner"] == "eve" and upd.after["owner"] == "eva"
    assert dele.op is OpType.DELETE and dele.after is None and dele.key == {"id": 5}
    assert [o.seq for o in (ins, upd, dele)] == [c.seq for c in changes]
    assert all(o.source == "shop" and o.table == "accounts" for o in (ins, upd, dele))
    assert [o.commit_time_us for o in (ins, upd, dele)] == [c.at_us for c in changes]


def test_primary_key_change_becomes_delete_then_insert(conn, app):
    lay, changes = _changes_for(conn, app, ["UPDATE lines SET line = 7 WHERE line = 1"])
    assert len(changes) == 1
    ops = to_operations(changes[0], lay["lines"], "shop")
    assert [o.op for _, o in ops] == [OpType.DELETE, OpType.INSERT]
    (old_key, delete), (new_key, insert) = ops
    assert delete.key == {"line": 1, "order_id": "o1"}
    assert insert.key == {"line": 7, "order_id": "o1"}
    assert delete.before == {"order_id": "o1", "line": 1, "item": "apple"}
    assert insert.after == {"order_id": "o1", "line": 7, "item": "apple"}
    assert old_key != new_key
    assert old_key == message_key("lines", ["1", "'o1'"])
    assert new_key == message_key("lines", ["7", "'o1'"])
    assert delete.seq == insert.seq == changes[0].seq


def test_odd_named_key_column_operations_carry_that_key(conn, app):
    lay, changes = _changes_for(
        conn,
        app,
        [f"UPDATE {ODD_Q} SET v = 4", f"""UPDATE {ODD_Q} SET "first name" = 'Bo, "b"'"""],
    )
    ((k1, upd),) = to_operations(changes[0], lay[ODD], "shop")
    assert upd.op is OpType.UPDATE and upd.key == {"first name": "Zoë O'Neil"}
    assert upd.before == {"first name": "Zoë O'Neil", "v": 3}
    assert upd.after == {"first name": "Zoë O'Neil", "v": 4}
    assert k1 == message_key(ODD, ["'Zoë O''Neil'"])
    assert k1 == (ODD + "\x1f'Zoë O''Neil'").encode()
    moved = to_operations(changes[1], lay[ODD], "shop")
    assert [(o.op, o.key) for _, o in moved] == [
        (OpType.DELETE, {"first name": "Zoë O'Neil"}),
        (OpType.INSERT, {"first name": 'Bo, "b"'}),
    ]
    assert moved[1][0] == message_key(ODD, ["'Bo, \"b\"'"])


def test_to_operations_rejects_images_of_the_wrong_width(conn):
    defs = install(conn, "shop", ["accounts"])
    bad = ChangeRow(99, "I", "accounts", None, "1,'x'", None, 0)
    with pytest.raises(ValueError, match="2 values for 3 columns"):
        to_operations(bad, TableLayout.of(defs[0]), "shop")


def test_partition_for_is_crc32_based_and_within_range():
    keys = [message_key("accounts", [str(i)]) for i in range(500)]
    for partitions in (1, 3, 4, 7, 64):
        got = [partition_for(k, partitions) for k in keys]
        assert all(0 <= p < partitions for p in got)
        assert got == [zlib.crc32(k) % partitions for k in keys]
        if partitions > 1:
            assert len(set(got)) == partitions  # 500 keys spread over every partition


def test_partition_for_is_stable_across_processes():
    keys = [message_key("t", [str(i), f"'k{i}'"]) for i in range(50)]
    here = [partition_for(k, 7) for k in keys]
    code = (
        "from producers.operations import message_key, partition_for\n"
        "keys = [message_key('t', [str(i), f\"'k{i}'\"]) for i in range(50)]\n"
        "print([partition_for(k, 7) for k in keys])\n"
    )
    outs = set()
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        outs.add(out)
    assert outs == {str(here)}


# -- replaying the change log reproduces the primary -------------------------------------------


def _replay(conn, defs, tmp_path: Path):
    shard = Shard(tmp_path / "replay" / "p0.sqlite", 0)
    for d in defs:
        shard.define(d)
    lay = layouts(defs)
    errors = []
    offset = 0
    for change in read_changes(conn, 0, 100_000):
        if change.kind == KIND_MARKER:
            continue
        for _, op in to_operations(change, lay[change.table], "shop"):
            shard.begin()
            try:
                shard.apply(op)
            except ApplyError as exc:
                errors.append(str(exc))
                shard.rollback()
                continue
            offset += 1
            shard.commit(offset)
    return shard, errors


def _table_rows(c, table, columns):
    cols = ",".join(quote_identifier(x) for x in columns)
    return sorted(c.execute(f"SELECT {cols} FROM {quote_identifier(table)}").fetchall(), key=repr)


def _assert_replica_matches(shard, app, defs):
    for d in defs:
        assert d.key_columns != ("rowid",)
        cols = d.column_names
        assert rows_equal(_table_rows(shard.conn, d.table, cols), _table_rows(app, d.table, cols))


def test_replaying_the_change_log_reproduces_the_primary(conn, app, tmp_path):
    defs = install(conn, "shop", TABLES)
    app.execute("INSERT INTO accounts VALUES (3, 'cy', 1)")
    app.execute("UPDATE accounts SET id = 30 WHERE id = 3")
    app.execute("UPDATE lines SET item = NULL WHERE line = 2")
    app.execute("UPDATE lines SET order_id = 'o2' WHERE line = 1")
    app.execute("INSERT INTO notes(body, n) VALUES ('x', 2)")
    app.execute("DELETE FROM notes WHERE n = 1")
    app.execute(f"INSERT INTO {ODD_Q} VALUES ('a,b', X'00')")
    app.execute(f"""UPDATE {ODD_Q} SET "first name" = 'Zoe' WHERE v = 3""")
    shard, errors = _replay(conn, defs, tmp_path)
    try:
        assert errors == []
        _assert_replica_matches(shard, app, defs)
    finally:
        shard.close()


def test_replay_matches_primary_after_vacuum_with_primary_keys(conn, app, tmp_path):
    """VACUUM may renumber rowids, but an INTEGER PRIMARY KEY *is* the rowid and is kept,
    and a declared (non-integer) key does not depend on rowids at all."""
    defs = install(conn, "shop", ["notes", "lines"])
    app.executemany("INSERT INTO notes(body, n) VALUES (?, ?)", [(f"n{i}", i) for i in range(2, 8)])
    app.executemany(
        "INSERT INTO lines VALUES (?, ?, ?)", [(f"o{i}", i, f"item {i}") for i in range(3, 9)]
    )
    app.execute("DELETE FROM notes WHERE n < 4")
    app.execute("DELETE FROM lines WHERE line < 5")
    ids_before = app.execute("SELECT id, n FROM notes ORDER BY id").fetchall()
    app.execute("VACUUM")
    assert app.execute("SELECT id, n FROM notes ORDER BY id").fetchall() == ids_before
    app.execute("UPDATE notes SET body = 'changed' WHERE n = 4")
    app.execute("DELETE FROM notes WHERE n = 7")
    app.execute("INSERT INTO notes(body, n) VALUES ('new', 8)")
    app.execute("UPDATE lines SET item = 'changed' WHERE line = 5")
    app.execute("DELETE FROM lines WHERE line = 8")
    app.execute("INSERT INTO lines VALUES ('o9', 9, 'new')")
    shard, errors = _replay(conn, defs, tmp_path)
    try:
        assert errors == []
        _assert_replica_matches(shard, app, defs)
        got = shard.conn.execute("SELECT id, body, n FROM notes ORDER BY id").fetchall()
        assert [r[2] for r in got] == [4, 5, 6, 8]
        assert got[0][1] == "changed"
    finally:
        shard.close()


# -- tables without a PRIMARY KEY are refused --------------------------------------------------

NO_KEY = 'no "key"; DROP TABLE y; --'


def _cutline_objects(c) -> list[tuple[str, str]]:
    return c.execute(
        "SELECT type, name FROM sqlite_master WHERE name LIKE '\\_cutline\\_%' ESCAPE '\\' "
        "ORDER BY type, name"
    ).fetchall()


@pytest.mark.parametrize(
    "columns",
    ["body, n", "body TEXT UNIQUE NOT NULL, n", "id INTEGER, n", "id INT PRIMARY_KEY_NOT"],
)
def test_describing_a_table_without_primary_key_is_config_error(conn, app, columns):
    app.execute(f"CREATE TABLE loose({columns})")
    with pytest.raises(ConfigError) as info:
        describe_table(conn, "shop", "loose")
    message = str(info.value)
    assert "table 'loose' has no PRIMARY KEY" in message
    assert "add a PRIMARY KEY" in message


def test_installing_a_table_without_primary_key_is_refused_and_installs_nothing(conn, app):
    app.execute("CREATE TABLE loose(body, n)")
    app.execute("INSERT INTO loose VALUES ('a', 1)")
    with pytest.raises(ConfigError, match="no PRIMARY KEY") as info:
        install(conn, "shop", ["accounts", "loose"])
    message = str(info.value)
    assert "'loose'" in message and "add a PRIMARY KEY" in message
    assert "'accounts'" not in message
    assert installed_tables(conn) == []
    assert _cutline_objects(conn) == []
    assert _cutline_objects(app) == []
    # The application keeps writing, uncaptured and undisturbed.
    app.execute("INSERT INTO accounts VALUES (77, 'zed', 1)")
    app.execute("INSERT INTO loose VALUES ('b', 2)")
    assert _cutline_objects(app) == []


def test_odd_named_table_without_primary_key_is_named_in_the_refusal(conn, app):
    app.execute(f'CREATE TABLE {quote_identifier(NO_KEY)}("first name" TEXT, v)')
    with pytest.raises(ConfigError) as info:
        install(conn, "shop", [NO_KEY])
    message = str(info.value)
    assert f"table {NO_KEY!r} has no PRIMARY KEY" in message
    assert "add a PRIMARY KEY" in message
    assert _cutline_objects(conn) == []
    names = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {NO_KEY, "y"} <= names


def test_refusal_after_an_earlier_install_keeps_the_existing_capture(conn, app):
    install(conn, "shop", ["accounts"])
    before_objects = _cutline_objects(conn)
    before_changes = read_changes(conn, 0, 1000)
    app.execute("CREATE TABLE loose(body, n)")
    with pytest.raises(ConfigError, match="'loose' has no PRIMARY KEY"):
        install(conn, "shop", ["accounts", "notes", "loose"])
    assert installed_tables(conn) == ["accounts"]
    assert _cutline_objects(conn) == before_objects
    assert not any("notes" in name or "loose" in name for _, name in before_objects)
    assert read_changes(conn, 0, 1000) == before_changes
    app.execute("INSERT INTO accounts VALUES (78, 'still', 1)")
    assert read_changes(conn, 0, 1000)[-1].table == "accounts"


def test_without_rowid_table_with_primary_key_is_captured(conn, app):
    app.execute("CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    app.execute("INSERT INTO kv VALUES ('a', 1)")
    (d,) = install(conn, "shop", ["kv"])
    assert d.key_columns == ("k",)
    assert [image(c.after) for c in read_changes(conn, 0, 1000)] == [["a", 1]]


def test_changes_table_is_named_as_documented(conn):
    install(conn, "shop", ["accounts"])
    assert conn.execute(f"SELECT count(*) FROM {CHANGES}").fetchone()[0] == 2


def test_reals_round_trip_exactly_where_quote_would_round_them(conn, app):
    """SQLite's quote() gives 591027.471663712 for 591027.4716637121: capture must not."""
    app.execute("CREATE TABLE reals(id INTEGER PRIMARY KEY, x REAL)")
    install(conn, "shop", ["reals"])
    start = read_changes(conn, 0, 1000)
    start_seq = start[-1].seq if start else 0
    app.execute("INSERT INTO reals(x) VALUES (591027.4716637121)")  # parsed by SQLite
    rng = random.Random(11)
    bound = [rng.random() * 10 ** rng.randint(-300, 300) for _ in range(2000)]
    bound += [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -0.5, 1e22]
    app.executemany("INSERT INTO reals(x) VALUES (?)", [(v,) for v in bound])
    stored = [r[0] for r in app.execute("SELECT x FROM reals ORDER BY id")]
    changes = read_changes(conn, start_seq, 10_000)
    captured = [image(c.after)[1] for c in changes]
    assert len(captured) == len(stored)
    assert [same(a, b) for a, b in zip(captured, stored, strict=True)] == [True] * len(stored)
