"""A table's ``digest`` for the manifest and the proof, at the cost of what the backup reads.

Full pass (:class:`ProofAccumulator`): the digest of the pinned shards' own (native) rows,
fed the chunks the writer reads anyway (``table_stream.shard_batches(on_rows=...)``), so
a full backup reads each row once. It also finds the columns the backup widened
(``widened_columns``) and, only then, re-reads the table converted for ``restored_digest``.

Derived (:class:`DigestDerivation`): an incremental built from the recorded keys reads only
the touched keys' rows. A digest is (row count, sum of row hashes mod 2^64), so its digest
is the parent's digest, minus the hashes of the touched keys' rows at the parent's cut,
plus the hashes of their rows now. The rows at the parent's cut are those the incremental
itself diffs against: the parent backup chain resolved for the touched keys (the newest
link holding each key, or deleted). That choice is exact in every case, by induction on
the chain: the parent's recorded digest is the digest of the parent's resolved content
(a full pass digests the very rows it writes; a derived one is that content by
construction), the new content is exactly the parent's content with the touched keys
replaced by their rows now, so the derived digest is the digest of the new backup's
resolved content. Failed or abandoned cuts in between change nothing: the chain holds only
published backups, and the keys come from ``after_marker >= parent``. The digest then
proves the *backup*, not only the shard: a shard row changed by hand (never recorded) is
not in the backup and not in its digest; a change applied but not recorded is missing
from both the backup and the digest, so the primary's digest disagrees and the cut fails.

The hash of a backup value equals the hash of the native value only when the column was
not widened: BIGINT holds only SQLite integers, DOUBLE only reals, VARCHAR only text,
BLOB only blobs. So the digest is derived only when the parent recorded a digest and no
``widened_columns`` for the table and no touched row needs widening (an integer in a
DOUBLE column; a text fallback column is never keyed); then, by induction again, no row
of the new content is widened either. Otherwise :class:`DigestDerivation` says why, and the
snapshotter diffs the whole table (a full pass), as it does for a layout change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from backups.backup_digest import restored_digest
from backups.writer.column_types import BIGINT, BLOB, DOUBLE, TEXT_FALLBACK, VARCHAR, ColumnType
from consumers.replica import iter_rows
from producers.digest import ENCODE_ROWS, DigestAccumulator, TableDigest
from schemas.records import TableDefinition

# Backup types whose values are the native SQLite values themselves (no widening).
_NATIVE = {id(BIGINT): int, id(DOUBLE): float, id(VARCHAR): str, id(BLOB): bytes}


class ProofAccumulator:
    """The digest of a table's native rows, added chunk by chunk, and its widened columns."""

    def __init__(self, definition: TableDefinition, types: Sequence[ColumnType]):
        self.definition = definition
        self.types = list(types)
        self.digest = DigestAccumulator()
        self._candidates = [i for i, t in enumerate(types) if t is TEXT_FALLBACK or t is DOUBLE]
        self.widened: set[int] = {i for i in self._candidates if types[i] is TEXT_FALLBACK}

    def add(
        self,
        chunk: Sequence[tuple],
        columns: Sequence[Sequence[object]],
        arrays: Sequence[pa.Array | None],
    ) -> None:
        """A chunk, as ``shard_batches`` hands it on: rows, columns and Arrow arrays."""
        self.digest.add(chunk, columns, arrays)
        for i in self._candidates:
            if i not in self.widened and int in set(map(type, columns[i])):
                self.widened.add(i)

    def fields(self, reread: Iterable[Sequence[tuple]] | None = None) -> dict[str, Any]:
        """``digest`` and, for a widened table, ``widened_columns`` and maybe
        ``restored_digest`` (``reread``: the same native rows again, in chunks)."""
        definition = self.definition
        result = self.digest.result(definition.table)
        out: dict[str, Any] = {"digest": result.as_json()}
        if not self.widened:
            return out
        out["widened_columns"] = [definition.columns[i].name for i in sorted(self.widened)]
        if reread is None:
            raise ValueError(f"table {definition.table!r} was widened: its rows are needed again")
        types = self.types

        def converted() -> Iterator[tuple]:
            for chunk in reread:
                for row in chunk:
                    yield tuple(
                        v if t.convert is None else t.convert(v)
                        for v, t in zip(row, types, strict=True)
                    )

        names = list(definition.column_names)
        restored = restored_digest(definition.table, definition.ddl, names, converted())
        if (restored.rows, restored.hash) != (result.rows, result.hash):
            out["restored_digest"] = restored.as_json()
        return out


def shard_chunks(
    connections: Sequence[sqlite3.Connection], definition: TableDefinition
) -> Iterator[list[tuple]]:
    for conn in connections:
        yield from iter_rows(conn, definition.table, definition.column_names)


class DigestDerivation:
    """The table's digest from its parent's: the touched keys' rows now in (added slice by
    slice, :meth:`add_now`), their rows in the parent out (:meth:`result`); or why not
    (``problem``, set as soon as it is known)."""

    def __init__(
        self,
        parent_table: dict[str, Any],
        definition: TableDefinition,
        types: Sequence[ColumnType],
    ):
        self.definition = definition
        self.parent_table = parent_table
        self.now = DigestAccumulator()
        self.problem: str | None = None
        natives = [_NATIVE.get(id(t)) for t in types]
        self._doubles = [i for i, kind in enumerate(natives) if kind is float]
        if "digest" not in parent_table:
            self.problem = "the previous backup records no digest of it"
        elif parent_table.get("widened_columns") or parent_table.get("restored_digest"):
            self.problem = (
                "the previous backup widened a column, so its values are not the native ones"
            )
        elif None in natives:
            self.problem = "a column is kept as text"

    def add_now(self, rows: Sequence[tuple], columns: Sequence[Sequence[object]]) -> None:
        """Touched rows at this cut (native values), and the same rows as columns."""
        if self.problem is not None:
            return
        for i in self._doubles:
            if int in set(map(type, columns[i])):
                name = self.definition.columns[i].name
                self.problem = f"column {name!r} holds an integer in a DOUBLE column"
                return
        self.now.add(rows, columns)

    def result(self, before: pa.Table) -> TableDigest | str:
        """``before``: the touched keys' rows in the parent (backup values)."""
        if self.problem is not None:
            return self.problem
        table = self.definition.table
        names = list(self.definition.column_names)
        if before.column_names != names:
            return "the previous backup's columns are not the table's"
        old = DigestAccumulator()
        for batch in before.to_batches(max_chunksize=ENCODE_ROWS):  # Python values per slice
            arrays = list(batch.columns)
            columns = [a.to_pylist() for a in arrays]
            old.add(list(zip(*columns, strict=True)), columns, arrays)
        parent = TableDigest.from_json(table, self.parent_table["digest"])
        derived = parent.changed(old.result(table), self.now.result(table))
        if derived.rows < 0:
            return "the previous backup's digest counts fewer rows than it holds"
        return derived
