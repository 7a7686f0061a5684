"""Schema changes on captured tables, on real SQLite files, without a broker.

Each test runs the application's DDL and writes on a primary, cuts markers recording the
primary's content at each marker's commit (the oracle), and replays the change log the
way capture and a replica shard do (``Mirror``: ``layouts_at`` at the position, 'S' rows
as table definitions, the rest through ``to_operations`` into a real ``Shard``). The
shard's content at each marker must equal the oracle, column names included, and the
primary's digest of each marker (its 'G' row) must equal the shard's digest of the tables
the marker lists, each in its layout at the marker.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_capture_transactions import (
    PARTITIONS,
    StandInProducer,
    abortable,
    make_capture,
    published,
)

from consumers.replica import Shard
from cutline.errors import ConfigError
from producers.digest import digest_table, digest_tables
from producers.marker_digest import DigestPayload
from producers.markers import request_marker, request_marker_in_transaction
from producers.operations import TableLayout, to_operations
from producers.schema_changes import (
    DEFINITIONS,
    follow_schema_changes,
    layouts_at,
    migrate,
    reinstalled_definition,
    schema_moved,
    split_statements,
)
from producers.sqlite_changelog import (
    CHANGES,
    KIND_DIGEST,
    KIND_MARKER,
    KIND_SCHEMA,
    connect,
    install,
    installed_tables,
    quote_identifier,
    read_changes,
)
from schemas.records import ConsistencyMarker, MarkerDigest, Operation, TableDefinition

SOURCE = "shop"
TABLES = ["accounts", "tags"]
Content = dict[str, tuple[list[str], list[tuple]]]


def content(conn: sqlite3.Connection, tables: list[str]) -> Content:
    out: Content = {}
    for table in tables:
        q = quote_identifier(table)
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({q})")]
        out[table] = (columns, sorted(conn.execute(f"SELECT * FROM {q}").fetchall(), key=repr))
    return out


class Mirror:
    """What capture and one replica shard make of the change log (no Kafka in between)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, restart_each_time: bool):
        self.conn = conn
        self.shard = Shard(path, 0)
        self.restart_each_time = restart_each_time
        self.seq = 0
        self.layouts: dict[str, TableLayout] = {}
        self.at_marker: dict[int, Content] = {}
        self.digest_at_marker: dict[int, list] = {}  # the shard's, over the marker's tables
        self.proven: list[int] = []  # markers whose 'G' row matched the shard
        self._start()

    def _start(self) -> None:
        """As capture's open(): layouts at the position, each sent to the replica again."""
        definitions = layouts_at(self.conn, SOURCE, self.seq)
        self.layouts = {t: TableLayout.of(d) for t, d in definitions.items()}
        self.shard.begin()
        for definition in definitions.values():
            self.shard.define(definition)
        self.shard.commit(self.seq)

    def follow(self) -> None:
        """Publish and apply everything committed so far, checking schema_version first."""
        if self.restart_each_time:
            self._start()
        while True:
            self.conn.execute("BEGIN")
            moved = schema_moved(self.conn)
            rows = [] if moved else read_changes(self.conn, self.seq, 1_000_000)
            self.conn.execute("COMMIT")
            if not moved:
                break
            follow_schema_changes(self.conn)
        self.shard.begin()
        for row in rows:
            if row.kind == KIND_MARKER:
                self.shard.commit(row.seq)
                self.at_marker[row.marker_id or 0] = content(self.shard.conn, sorted(self.layouts))
                self.digest_at_marker[row.marker_id or 0] = digest_tables(
                    self.shard.conn, self.layouts
                )
                self.shard.begin()
            elif row.kind == KIND_DIGEST:  # the primary's digest at that marker, as capture sends
                payload = DigestPayload.from_json(row.marker_id or 0, row.after or "")
                if not payload.skipped:
                    expected = self.digest_at_marker[payload.marker_id]
                    assert list(payload.tables) == expected, f"marker {payload.marker_id}"
                    self.proven.append(payload.marker_id)
            elif row.kind == KIND_SCHEMA:
                definition = reinstalled_definition(row.table or "", row.after, SOURCE)
                self.shard.define(definition)
                if row.after is None:
                    del self.layouts[definition.table]
                else:
                    self.layouts[definition.table] = TableLayout.of(definition)
            else:
                table = row.table or ""
                if table not in self.layouts:  # installed after the start (as capture does)
                    definition = layouts_at(self.conn, SOURCE, row.seq - 1)[table]
                    self.shard.define(definition)
                    self.layouts[table] = TableLayout.of(definition)
                for _, operation in to_operations(row, self.layouts[table], SOURCE):
                    self.shard.apply(operation)
        self.shard.commit(rows[-1].seq if rows else self.seq)
        self.seq = rows[-1].seq if rows else self.seq


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "primary.sqlite"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.executescript(
        """
        CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance REAL,
                              avatar BLOB);
        CREATE TABLE tags(account INTEGER, tag TEXT, PRIMARY KEY (account, tag)) WITHOUT ROWID;
        CREATE TABLE other(x);
        INSERT INTO accounts VALUES (1, 'ann', 10.5, x'00ff'), (2, 'bob', 0.25, NULL);
        INSERT INTO tags VALUES (1, 'vip'), (2, 'new');
        """
    )
    setup.close()
    return path


@pytest.fixture
def conn(db_path: Path):
    c = connect(db_path)
    install(c, SOURCE, TABLES)
    yield c
    c.close()


@pytest.fixture
def app(db_path: Path):
    """The application's own connection (recursive_triggers off, as by default)."""
    c = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    yield c
    c.close()


@pytest.fixture(params=[False, True], ids=["running", "restarted"])
def mirror(request, conn, tmp_path: Path) -> Mirror:
    return Mirror(conn, tmp_path / "shard.sqlite", restart_each_time=request.param)


class Oracle:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.expected: dict[int, Content] = {}

    def cut(self) -> int:
        """Commit a marker and record the primary's content at exactly that commit."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            state = content(self.conn, installed_tables(self.conn))
            ticket = request_marker_in_transaction(self.conn, note="test")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.expected[ticket.marker_id] = state
        return ticket.marker_id


@pytest.fixture
def oracle(db_path: Path):
    c = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    yield Oracle(c)
    c.close()


def assert_exact(mirror: Mirror, oracle: Oracle) -> None:
    mirror.follow()
    assert set(mirror.at_marker) == set(oracle.expected)
    for marker_id, expected in oracle.expected.items():
        assert mirror.at_marker[marker_id] == expected, f"marker {marker_id} differs"
    assert sorted(mirror.proven) == sorted(oracle.expected), "every marker's digest matched"


def schema_rows(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT tbl FROM {CHANGES} WHERE kind = 'S' ORDER BY seq")]


# -- DDL kinds that are followed -------------------------------------------------------------


@pytest.mark.parametrize("column", ["email TEXT", "score INTEGER NOT NULL DEFAULT 7"])
def test_add_column_is_followed(conn, app, mirror, oracle, column):
    app.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
    before = oracle.cut()
    mirror.follow()  # capture running: published up to the cut, old layout
    app.execute(f"ALTER TABLE accounts ADD COLUMN {column}")
    # written before cutline noticed: the old triggers log these without the new column
    app.execute("INSERT INTO accounts(id, owner) VALUES (3, 'cy')")
    app.execute("UPDATE accounts SET owner = 'ann2' WHERE id = 1")
    after = oracle.cut()
    app.execute("INSERT INTO accounts(id, owner, balance) VALUES (4, 'di', 2)")
    last = oracle.cut()
    assert_exact(mirror, oracle)
    assert schema_rows(conn) == ["accounts"]
    assert len(oracle.expected[before]["accounts"][0]) == 4
    assert len(oracle.expected[after]["accounts"][0]) == 5
    assert oracle.expected[last]["accounts"][1][-1][0] == 4


def test_drop_column_is_refused_by_sqlite_and_done_by_migrate(conn, app, mirror, oracle):
    oracle.cut()
    with pytest.raises(sqlite3.OperationalError, match="_cutline_"):
        app.execute("ALTER TABLE accounts DROP COLUMN avatar")
    app.execute("INSERT INTO accounts VALUES (3, 'cy', 1, x'01')")
    assert migrate(conn, "ALTER TABLE accounts DROP COLUMN avatar")["reinstalled"] == ["accounts"]
    app.execute("INSERT INTO accounts(id, owner, balance) VALUES (4, 'di', 2)")
    oracle.cut()
    assert_exact(mirror, oracle)
    assert list(oracle.expected.values())[-1]["accounts"][0] == ["id", "owner", "balance"]


def test_rename_column_is_followed(conn, app, mirror, oracle):
    oracle.cut()
    mirror.follow()
    app.execute("ALTER TABLE accounts RENAME COLUMN owner TO holder")
    app.execute("UPDATE accounts SET holder = 'bo' WHERE id = 2")
    oracle.cut()
    assert_exact(mirror, oracle)
    assert schema_rows(conn) == ["accounts"]


@pytest.mark.parametrize("in_one_transaction", [True, False])
def test_create_copy_drop_rename_recipe_is_followed_even_changing_the_key(
    conn, app, mirror, oracle, in_one_transaction
):
    oracle.cut()
    mirror.follow()
    steps = [
        "CREATE TABLE new_tags(account INTEGER NOT NULL, tag TEXT NOT NULL, since INTEGER,"
        " PRIMARY KEY (tag, account))",
        "INSERT INTO new_tags SELECT account, tag, 2024 FROM tags",
        "DROP TABLE tags",
        "ALTER TABLE new_tags RENAME TO tags",
    ]
    if in_one_transaction:
        app.execute("BEGIN")
        for step in steps:
            app.execute(step)
        app.execute("COMMIT")
    else:
        for step in steps[:3]:
            app.execute(step)
        # capture notices the table is gone mid-migration: it stops, saying what to do
        with pytest.raises(ConfigError, match=r"no longer exists.*finish it"):
            mirror.follow()
        app.execute(steps[3])
    app.execute("INSERT INTO tags VALUES (3, 'gold', 2025)")
    oracle.cut()
    assert_exact(mirror, oracle)
    assert schema_rows(conn) == ["tags"]
    # the migration dropped capture's triggers; they are back: later changes are captured
    app.execute("DELETE FROM tags WHERE account = 1")
    oracle.cut()
    assert_exact(mirror, oracle)


def test_ddl_inside_the_applications_transaction_with_data_changes(conn, app, mirror, oracle):
    oracle.cut()
    app.execute("BEGIN")
    app.execute("INSERT INTO accounts VALUES (5, 'ed', 5, NULL)")
    app.execute("ALTER TABLE accounts ADD COLUMN email TEXT")
    app.execute("UPDATE accounts SET email = 'ed@x', balance = 6 WHERE id = 5")
    app.execute("DELETE FROM accounts WHERE id = 1")
    app.execute("INSERT INTO tags VALUES (5, 'new')")
    app.execute("COMMIT")
    oracle.cut()
    assert_exact(mirror, oracle)


def test_a_dropped_trigger_is_put_back_and_missed_changes_recovered(conn, app, mirror, oracle):
    oracle.cut()
    app.execute('DROP TRIGGER "_cutline_au_accounts"')
    app.execute("UPDATE accounts SET balance = 99 WHERE id = 2")  # not logged
    oracle.cut()
    assert_exact(mirror, oracle)
    triggers = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'accounts'"
    ).fetchall()
    assert ("_cutline_au_accounts",) in triggers


def test_ddl_that_changes_no_captured_table_is_a_no_op(conn, app, mirror, oracle):
    oracle.cut()
    app.execute("CREATE INDEX accounts_owner ON accounts(owner)")
    app.execute("ALTER TABLE other ADD COLUMN y")
    app.execute("CREATE TABLE more(z)")
    assert schema_moved(conn)
    oracle.cut()
    assert not schema_moved(conn)
    assert_exact(mirror, oracle)
    assert schema_rows(conn) == []


def test_a_restart_before_the_fix_up_reads_old_rows_in_the_old_layout(conn, app, tmp_path):
    app.execute("ALTER TABLE accounts ADD COLUMN email TEXT")
    app.execute("INSERT INTO accounts(id, owner) VALUES (3, 'cy')")  # old layout in the log
    assert follow_schema_changes(conn) == ["accounts"]
    old = layouts_at(conn, SOURCE, 0)["accounts"]
    new = layouts_at(conn, SOURCE, 10**9)["accounts"]
    assert "email" not in old.column_names and "email" in new.column_names


# -- refused ---------------------------------------------------------------------------------


def test_drop_table_is_refused_loudly_and_no_marker_is_cut(conn, app):
    app.execute("DROP TABLE tags")
    with pytest.raises(ConfigError, match="'tags' no longer exists"):
        request_marker(conn)
    assert conn.execute(f"SELECT count(*) FROM {CHANGES} WHERE kind = 'M'").fetchone() == (0,)
    with pytest.raises(ConfigError, match="no longer exists"):
        follow_schema_changes(conn)


def test_rename_of_a_captured_table_is_refused_until_renamed_back(conn, app, mirror, oracle):
    oracle.cut()
    app.execute("ALTER TABLE accounts RENAME TO clients")
    with pytest.raises(ConfigError, match=r"renamed to 'clients'.*rename it back"):
        mirror.follow()
    app.execute("ALTER TABLE clients RENAME TO accounts")
    app.execute("INSERT INTO accounts VALUES (9, 'z', 0, NULL)")
    oracle.cut()
    assert_exact(mirror, oracle)


def test_a_table_dropped_for_good_is_let_go_through_migrate(conn, app, mirror, oracle):
    oracle.cut()
    mirror.follow()
    app.execute("UPDATE tags SET tag = 'gone' WHERE account = 1")
    app.execute("DROP TABLE tags")
    with pytest.raises(ConfigError, match="DROP TABLE IF EXISTS"):
        request_marker(conn)
    assert migrate(conn, 'DROP TABLE IF EXISTS "tags"') == {
        "reinstalled": [],
        "no_longer_captured": ["tags"],
    }
    assert installed_tables(conn) == ["accounts"]
    app.execute("INSERT INTO accounts (id, owner) VALUES (7, 'g')")
    oracle.cut()
    assert_exact(mirror, oracle)
    assert list(oracle.expected.values())[-1].keys() == {"accounts"}
    assert (
        mirror.shard.conn.execute("SELECT name FROM sqlite_master WHERE name = 'tags'").fetchone()
        is None
    )


def test_a_renamed_table_is_let_go_and_captured_under_its_new_name(conn, app, mirror, oracle):
    oracle.cut()
    mirror.follow()
    app.execute("ALTER TABLE tags RENAME TO labels")
    app.execute("INSERT INTO labels VALUES (3, 'x')")
    with pytest.raises(ConfigError, match="renamed to 'labels'"):
        request_marker(conn)
    migrate(conn, "DROP TABLE IF EXISTS tags")
    assert conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'labels'"
    ).fetchone() == (0,)
    install(conn, SOURCE, ["labels"])
    app.execute("DELETE FROM labels WHERE account = 2")
    oracle.cut()
    assert_exact(mirror, oracle)
    assert list(oracle.expected.values())[-1]["labels"][1] == [(1, "vip"), (3, "x")]


def test_a_database_installed_before_schema_changes_were_followed(conn, app, mirror, oracle):
    conn.executescript("DROP TABLE _cutline_definitions; DROP TABLE _cutline_schema;")
    app.execute("INSERT INTO accounts (id, owner) VALUES (8, 'h')")
    app.execute("ALTER TABLE accounts ADD COLUMN email TEXT")
    app.execute("UPDATE accounts SET email = 'h@x' WHERE id = 8")
    oracle.cut()
    assert_exact(mirror, oracle)
    assert schema_rows(conn) == ["accounts"]


def test_losing_the_primary_key_is_refused(conn, app):
    app.executescript(
        "BEGIN; CREATE TABLE t2(id, owner, balance, avatar); INSERT INTO t2 SELECT * FROM accounts;"
        "DROP TABLE accounts; ALTER TABLE t2 RENAME TO accounts; COMMIT;"
    )
    with pytest.raises(ConfigError, match="no longer has a PRIMARY KEY"):
        request_marker(conn)


# -- cutline migrate -------------------------------------------------------------------------


def test_migrate_is_all_or_nothing(conn, app):
    triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    with pytest.raises(ConfigError, match="statement 2 failed, nothing was changed"):
        migrate(conn, "ALTER TABLE accounts DROP COLUMN avatar; ALTER TABLE nope ADD x;")
    assert conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
    ).fetchall() == (triggers)
    assert [r[1] for r in conn.execute("PRAGMA table_info(accounts)")][-1] == "avatar"
    with pytest.raises(ConfigError, match="one transaction of its own"):
        migrate(conn, "BEGIN; ALTER TABLE accounts DROP COLUMN avatar; COMMIT")
    with pytest.raises(ConfigError, match="no SQL statement"):
        migrate(conn, " ; ")


def test_migrate_without_layout_or_row_changes_copies_nothing(conn, mirror, oracle):
    assert migrate(conn, "CREATE INDEX accounts_balance ON accounts(balance)")["reinstalled"] == []
    assert schema_rows(conn) == []
    oracle.cut()
    assert_exact(mirror, oracle)


def test_migrate_with_data_changes_is_exact(conn, mirror, oracle):
    oracle.cut()
    mirror.follow()
    migrate(
        conn,
        "ALTER TABLE accounts ADD COLUMN cents INTEGER;"
        "UPDATE accounts SET cents = CAST(balance * 100 AS INTEGER);"
        "ALTER TABLE accounts DROP COLUMN balance; UPDATE tags SET tag = 'x;y' WHERE account = 1",
    )
    oracle.cut()
    assert_exact(mirror, oracle)
    recorded = conn.execute(f"SELECT definition FROM {DEFINITIONS} WHERE tbl = 'accounts'")
    assert "cents" in recorded.fetchone()[0]


def test_split_statements_keeps_semicolons_inside_strings_and_triggers():
    sql = (
        "UPDATE t SET a = 'x;y';\nCREATE TRIGGER tr AFTER INSERT ON t BEGIN "
        "DELETE FROM u; INSERT INTO u VALUES (1); END; SELECT 1"
    )
    assert len(split_statements(sql)) == 3


def test_the_migrate_command_prints_one_line_and_a_json_summary(conn, db_path: Path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cutline.cli", "migrate", "--db", str(db_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    failed = run("ALTER TABLE accounts DROP COLUMN nope")
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "nothing was changed" in failed.stderr
    assert "Traceback" not in failed.stderr
    done = run("ALTER TABLE accounts DROP COLUMN avatar")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reinstalled": ["accounts"], "no_longer_captured": []}
    assert done.stderr == ""
    assert run("SELECT 1").returncode == 0  # nothing captured changed: nothing to do
    gone = subprocess.run(
        [sys.executable, "-m", "cutline.cli", "migrate", "--db", str(db_path.parent / "x.db"), "X"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 2 and "does not exist" in gone.stderr


def test_capture_publishes_the_new_definition_in_order_and_again_after_an_abort(tmp_path: Path):
    db = tmp_path / "primary.sqlite"
    setup = sqlite3.connect(db)
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    setup.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(20)])
    setup.commit()
    setup.close()
    producer = StandInProducer(commit_errors=[abortable()])
    capture = make_capture(db, producer)
    app = sqlite3.connect(db, isolation_level=None)
    app.execute("ALTER TABLE t ADD COLUMN w TEXT")
    app.execute("INSERT INTO t (id, v, w) VALUES (100, 'x', 'y')")  # logged in the old layout
    request_marker(capture._conn)  # follows the change first: 'S', then the copy, then 'M'
    app.close()

    assert capture.step() == 0, "the first transaction is aborted"
    assert capture._layouts["t"].columns == ("id", "v"), "the aborted definition is void"
    assert capture.step() == 21 + 1 + 21 + 1 + 1  # ..., the marker, then its digest
    records = published(producer)
    kinds = [type(r).__name__ for r in records]
    first_definition = kinds.index("TableDefinition")
    assert kinds[:first_definition] == ["Operation"] * 21
    definitions = [r for r in records if isinstance(r, TableDefinition)]
    assert len(definitions) == PARTITIONS and all(d.reinstalled for d in definitions)
    assert definitions[0].column_names == ("id", "v", "w")
    operations = [r for r in records if isinstance(r, Operation)]
    assert [set(op.after or {}) for op in operations[:21]] == [{"id", "v"}] * 21
    assert [set(op.after or {}) for op in operations[21:]] == [{"id", "v", "w"}] * 21
    marker = next(r for r in records if isinstance(r, ConsistencyMarker))
    assert sum(marker.counts) == 42 and marker.tables == ("t",)
    assert capture._layouts["t"].columns == ("id", "v", "w")
    assert not capture._layouts["t"].definition.reinstalled
    (digest,) = [r for r in records if isinstance(r, MarkerDigest)]
    assert kinds.index("MarkerDigest") > kinds.index("ConsistencyMarker")
    check = sqlite3.connect(db)
    primary = digest_table(check, "t")  # the new layout (id, v, w): the marker's
    check.close()
    assert digest.marker_id == marker.marker_id and not digest.skipped
    assert [(e.table, e.rows, e.hash) for e in digest.tables] == [("t", 21, primary.hex)]


def test_letting_a_table_go_leaves_the_triggers_of_a_table_whose_name_ends_like_it(conn, app):
    app.execute("CREATE TABLE x_tags (id INTEGER PRIMARY KEY)")
    install(conn, SOURCE, ["x_tags"])
    ours = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'x_tags'"
    before = conn.execute(ours).fetchone()
    migrate(conn, "DROP TABLE tags")
    assert conn.execute(ours).fetchone() == before != (0,)
    assert installed_tables(conn) == ["accounts", "x_tags"]
