"""Random write workloads on the test primary, for the integration and fault tests."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

from tests.integration.pipeline import Pipeline


def writes(pipeline: Pipeline, stop: threading.Event, seed: int) -> None:
    """Transfers, new accounts, deletions and key changes until ``stop``."""
    rng = random.Random(seed)
    conn = pipeline.connect()
    next_id = 50_000
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
            roll = rng.random()
            if roll < 0.6 and len(ids) > 1:
                src, dst = rng.sample(ids, 2)
                conn.execute("UPDATE accounts SET balance = balance - 3 WHERE id = ?", (src,))
                conn.execute("UPDATE accounts SET balance = balance + 3 WHERE id = ?", (dst,))
                conn.execute(
                    "INSERT INTO transfers (src, dst, amount, note) VALUES (?, ?, 3, 'x')",
                    (src, dst),
                )
            elif roll < 0.75:
                next_id += 1
                conn.execute("INSERT INTO accounts VALUES (?, 'n', 0, 0.5, NULL)", (next_id,))
                conn.execute("INSERT INTO tags VALUES (?, 'new')", (next_id,))
            elif roll < 0.85:
                conn.execute("DELETE FROM transfers WHERE id IN (SELECT id FROM transfers LIMIT 1)")
            elif ids:
                next_id += 1
                conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (next_id, rng.choice(ids)))
            conn.execute("COMMIT")
            time.sleep(0.002)
    finally:
        conn.close()


def random_transactions(pipeline: Pipeline, stop: threading.Event, seed: int) -> int:
    """Random transactions across tables and partitions until ``stop``; returns the count.

    Transfers between two accounts (most likely in different partitions), new accounts
    with tags, deletes, primary-key changes, blobs and full-precision REALs.
    """
    rng = random.Random(seed)
    conn = pipeline.connect()
    done = 0
    next_account = 10_000
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        ids = [r[0] for r in conn.execute("SELECT id FROM accounts")]
        choice = rng.random()
        if choice < 0.55 and len(ids) >= 2:
            transfer(conn, rng, ids)
        elif choice < 0.65:
            next_account += 1
            conn.execute(
                "INSERT INTO accounts VALUES (?, ?, 0, ?, NULL)",
                (next_account, f"new-{next_account}", rng.random()),
            )
            conn.execute("INSERT INTO tags VALUES (?, 'new')", (next_account,))
        elif choice < 0.72:
            conn.execute(
                "DELETE FROM transfers WHERE id IN (SELECT id FROM transfers ORDER BY random() "
                "LIMIT 2)"
            )
        elif choice < 0.78 and ids:
            # a primary-key change: the row moves to another key (and likely partition)
            old = rng.choice(ids)
            next_account += 1
            conn.execute("UPDATE accounts SET id = ? WHERE id = ?", (next_account, old))
        elif choice < 0.88:
            conn.execute(
                "INSERT INTO events (kind, payload) VALUES (?, ?)",
                ("tick", rng.randbytes(rng.randint(0, 8))),
            )
        else:
            conn.execute(
                "UPDATE accounts SET rate = ?, avatar = ? WHERE id = ?",
                (rng.random() * 1e6, rng.randbytes(4), rng.choice(ids) if ids else -1),
            )
        conn.execute("COMMIT")
        done += 1
        time.sleep(rng.random() * 0.004)
    conn.close()
    return done


def transfer(conn: sqlite3.Connection, rng: random.Random, ids: list[int]) -> None:
    """Move money between two accounts (most likely in different partitions) and log it,
    inside the caller's transaction: the multi-row, multi-partition change of a bank."""
    src, dst = rng.sample(ids, 2)
    amount = rng.randint(1, 50)
    conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, src))
    conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dst))
    conn.execute(
        "INSERT INTO transfers (src, dst, amount, note) VALUES (?, ?, ?, ?)",
        (src, dst, amount, rng.choice(["rent", "it's, fine", None, "ünïcode"])),
    )
