"""A small random write workload on the test primary, for the fault tests."""

from __future__ import annotations

import random
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
