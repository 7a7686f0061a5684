"""The kinds of change the fault workload makes, each a named, weighted statement form.

Why a catalogue: the workload must grow with every statement form capture learns
(REPLACE, upserts, cascades, key changes, schema changes, ...). A new form is one
:class:`StatementKind` here: add it to :data:`DEFAULT_KINDS` once capture handles it on
main, or to :data:`EXTRA_KINDS` to run it only where asked (``RunConfig.statements``,
``FAULTS_STATEMENTS``). Each kind runs inside the workload's open write transaction, on a
connection with ``PRAGMA foreign_keys = ON`` and ``recursive_triggers`` off (SQLite's
defaults otherwise): REPLACE then removes rows without firing DELETE triggers, and FK
actions cascade, which is exactly what capture must see through.

The REPLACE and cascade kinds use the fault primary's extra tables (:data:`FAULT_SCHEMA`):
``handles`` (a UNIQUE column besides the key), ``settings`` (``ON CONFLICT REPLACE`` in
its DDL) and ``cards`` (a foreign key to ``accounts`` with ``ON DELETE CASCADE ON UPDATE
CASCADE``, so an account's key change or deletion moves or removes its cards).
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from tests.integration.workload import transfer


def real(rng: random.Random, scale: float = 1.0) -> float:
    """A REAL at full precision (16-17 significant digits), as applications write them."""
    return rng.random() * scale


@dataclass(frozen=True)
class Change:
    """What a statement kind may use: the open transaction, the seeded rng, the account ids
    at the transaction's start, and a source of ids never used before."""

    conn: sqlite3.Connection
    rng: random.Random
    ids: list[int]
    new_id: Callable[[], int]


@dataclass(frozen=True)
class StatementKind:
    name: str
    weight: float  # share of the workload's transactions (relative to the other kinds)
    run: Callable[[Change], None]
    min_accounts: int = 0  # skipped (the next kind runs) while fewer accounts exist


# the fault primary's tables beside tests.integration.pipeline.SCHEMA's, and their first rows
FAULT_SCHEMA = """
CREATE TABLE handles (id INTEGER PRIMARY KEY, account INTEGER, handle TEXT NOT NULL UNIQUE);
CREATE TABLE settings (account INTEGER, key TEXT, value TEXT,
                       PRIMARY KEY (account, key) ON CONFLICT REPLACE);
CREATE TABLE cards (id INTEGER PRIMARY KEY,
                    account INTEGER NOT NULL REFERENCES accounts(id)
                        ON DELETE CASCADE ON UPDATE CASCADE,
                    label TEXT);
INSERT INTO handles SELECT id, id, 'h-' || id FROM accounts;
INSERT INTO cards (account, label) SELECT id, 'card-' || id FROM accounts WHERE id % 2 = 0;
INSERT INTO settings SELECT id, 'lang', 'en' FROM accounts WHERE id % 3 = 0;
"""
FAULT_TABLES = ["handles", "settings", "cards"]
SETTING_KEYS = ("lang", "tz", "theme")


def _new_account(c: Change) -> None:
    new = c.new_id()
    c.conn.execute(
        "INSERT INTO accounts VALUES (?, ?, 0, ?, NULL)", (new, f"new-{new}", real(c.rng))
    )
    c.conn.execute("INSERT INTO tags VALUES (?, 'new')", (new,))
    c.conn.execute("INSERT INTO handles VALUES (?, ?, ?)", (new, new, f"h-{new}"))


def _delete_transfers(c: Change) -> None:
    c.conn.execute(
        "DELETE FROM transfers WHERE id IN (SELECT id FROM transfers ORDER BY random() LIMIT 2)"
    )


def _account_key_change(c: Change) -> None:
    """The row moves to another key, and most likely to another partition."""
    c.conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (c.new_id(), c.rng.choice(c.ids)))


def _tag_key_change(c: Change) -> None:
    """A key change in a WITHOUT ROWID table with a composite key. The new tag is fresh
    (an application never hits its own unique key: ``tag || '+'`` could, as a tag may
    already have been moved to it)."""
    c.conn.execute(
        "UPDATE tags SET tag = tag || '+' || ? WHERE (account, tag) IN "
        "(SELECT account, tag FROM tags ORDER BY random() LIMIT 1)",
        (c.new_id(),),
    )


def _insert_event(c: Change) -> None:
    c.conn.execute(
        "INSERT INTO events (kind, payload) VALUES (?, ?)",
        ("tick", c.rng.randbytes(c.rng.randint(0, 8))),
    )


def _delete_events(c: Change) -> None:
    c.conn.execute(
        "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY random() LIMIT 3)"
    )


def _bulk_update(c: Change) -> None:
    """Many partitions in one transaction."""
    for account in c.rng.sample(c.ids, min(6, len(c.ids))):
        c.conn.execute("UPDATE accounts SET rate = ? WHERE id = ?", (real(c.rng), account))


def _update_account(c: Change) -> None:
    c.conn.execute(
        "UPDATE accounts SET rate = ?, avatar = ? WHERE id = ?",
        (real(c.rng, 1e6), c.rng.randbytes(4), c.rng.choice(c.ids)),
    )


def _upsert_tag(c: Change) -> None:
    """INSERT ... ON CONFLICT DO UPDATE: an insert, or an update of the existing row."""
    c.conn.execute(
        "INSERT INTO tags VALUES (?, 'vip') ON CONFLICT (account, tag) DO UPDATE "
        "SET tag = excluded.tag || '!' || ?",  # a fresh tag: never collides with another row
        (c.rng.choice(c.ids), c.new_id()),
    )


def _upsert_account(c: Change) -> None:
    """An upsert on an INTEGER PRIMARY KEY, hitting an existing row or inserting a new one."""
    target = c.rng.choice(c.ids) if c.rng.random() < 0.7 else c.new_id()
    c.conn.execute(
        "INSERT INTO accounts VALUES (?, 'upserted', 1, ?, NULL) ON CONFLICT (id) DO UPDATE "
        "SET balance = balance + excluded.balance, rate = excluded.rate",
        (target, real(c.rng)),
    )


def _insert_or_ignore(c: Change) -> None:
    """INSERT OR IGNORE on an existing key: no change at all, so nothing may be captured."""
    c.conn.execute("INSERT OR IGNORE INTO tags VALUES (?, 'new')", (c.rng.choice(c.ids),))


def _replace_account(c: Change) -> None:
    """INSERT OR REPLACE / REPLACE INTO on an existing key: SQLite deletes the old row (no
    DELETE trigger fires) and inserts the new one; the FK cascade removes its cards."""
    verb = c.rng.choice(["INSERT OR REPLACE", "REPLACE"])
    c.conn.execute(
        f"{verb} INTO accounts VALUES (?, 'replaced', ?, ?, ?)",
        (c.rng.choice(c.ids), c.rng.randint(0, 2000), real(c.rng), c.rng.randbytes(2)),
    )


def _two_handles(c: Change) -> list[tuple[int, str]]:
    return c.conn.execute("SELECT id, handle FROM handles ORDER BY random() LIMIT 2").fetchall()


def _replace_through_unique(c: Change) -> None:
    """REPLACE with a new key and a taken handle: the row holding the handle (another key,
    most likely another partition) is removed through the UNIQUE constraint."""
    taken = _two_handles(c)
    handle = taken[0][1] if taken else f"h-{c.new_id()}"
    c.conn.execute(
        "REPLACE INTO handles VALUES (?, ?, ?)", (c.new_id(), c.rng.choice(c.ids), handle)
    )


def _update_or_replace(c: Change) -> None:
    """UPDATE OR REPLACE onto another row's handle: that other row is removed."""
    rows = _two_handles(c)
    if len(rows) < 2:
        c.conn.execute("INSERT INTO handles VALUES (?, NULL, ?)", (c.new_id(), f"u-{c.new_id()}"))
        return
    (keep, _), (_, victims_handle) = rows
    c.conn.execute("UPDATE OR REPLACE handles SET handle = ? WHERE id = ?", (victims_handle, keep))


def _conflict_replace_in_ddl(c: Change) -> None:
    """A plain INSERT into a table whose key says ON CONFLICT REPLACE: on a taken key the
    old row is replaced, with no OR REPLACE in the statement."""
    c.conn.execute(
        "INSERT INTO settings VALUES (?, ?, ?)",
        (c.rng.choice(c.ids), c.rng.choice(SETTING_KEYS), f"v{c.rng.randint(0, 99)}"),
    )


def _new_card(c: Change) -> None:
    c.conn.execute(
        "INSERT INTO cards (account, label) VALUES (?, ?)",
        (c.rng.choice(c.ids), f"card-{c.new_id()}"),
    )


def _delete_account_cascading(c: Change) -> None:
    """An account deleted: ON DELETE CASCADE deletes its cards (in other partitions)."""
    c.conn.execute("DELETE FROM accounts WHERE id = ?", (c.rng.choice(c.ids),))


# The mix every fault scenario runs, in this order. Re-weighted when the REPLACE forms and
# cascades joined it: a seed now replays a different run than before that change.
DEFAULT_KINDS: tuple[StatementKind, ...] = (
    StatementKind("transfer", 0.30, lambda c: transfer(c.conn, c.rng, c.ids), min_accounts=2),
    StatementKind("new-account", 0.09, _new_account),
    StatementKind("delete-transfers", 0.05, _delete_transfers),
    StatementKind("account-key-change", 0.05, _account_key_change, min_accounts=1),
    StatementKind("tag-key-change", 0.03, _tag_key_change),
    StatementKind("insert-event", 0.09, _insert_event),
    StatementKind("delete-events", 0.04, _delete_events),
    StatementKind("bulk-update", 0.05, _bulk_update, min_accounts=1),
    StatementKind("update-account", 0.06, _update_account, min_accounts=1),
    StatementKind("replace-on-key", 0.05, _replace_account, min_accounts=1),
    StatementKind("replace-through-unique", 0.04, _replace_through_unique, min_accounts=1),
    StatementKind("update-or-replace", 0.04, _update_or_replace),
    StatementKind("on-conflict-replace-ddl", 0.04, _conflict_replace_in_ddl, min_accounts=1),
    StatementKind("new-card", 0.04, _new_card, min_accounts=1),
    StatementKind("delete-account-cascade", 0.03, _delete_account_cascading, min_accounts=1),
)

# forms run only where asked (the statement-forms scenario), beside the default mix
EXTRA_KINDS: dict[str, StatementKind] = {
    kind.name: kind
    for kind in (
        StatementKind("upsert-tag", 0.06, _upsert_tag, min_accounts=1),
        StatementKind("upsert-account", 0.06, _upsert_account, min_accounts=1),
        StatementKind("insert-or-ignore", 0.04, _insert_or_ignore, min_accounts=1),
    )
}


def kinds_named(names: Iterable[str]) -> tuple[StatementKind, ...]:
    """The default mix plus the extra kinds named; an unknown name lists the known ones."""
    names = list(names)
    unknown = [n for n in names if n not in EXTRA_KINDS]
    if unknown:
        raise ValueError(f"unknown statement kinds {unknown}; choose from {sorted(EXTRA_KINDS)}")
    return DEFAULT_KINDS + tuple(EXTRA_KINDS[n] for n in names)


def pick_and_run(kinds: Sequence[StatementKind], change: Change) -> str | None:
    """Run one kind, drawn by weight; a kind that needs more accounts passes to the next.

    One draw of ``rng.random()`` scaled to the total weight (the default mix totals 1.0).
    """
    choice = change.rng.random() * sum(k.weight for k in kinds)
    bound = 0.0
    for kind in kinds:
        bound += kind.weight
        if choice < bound and len(change.ids) >= kind.min_accounts:
            kind.run(change)
            return kind.name
    return None
