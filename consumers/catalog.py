"""The catalog: which backups exist and which instant of the primary each one is.

A backup is catalogued under its marker's T1, the primary's time at the cut, even though
it was written later, at T2. ``--as-of T`` therefore picks the newest backup with
T1 <= T: that backup *is* the primary as it was at T1.

Layout: ``<backups>/<source>/marker-<id>/manifest.json`` (+ the files it lists). Only
directories with a manifest count; temp directories (``.tmp-*``) are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cutline.errors import CutlineError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class CatalogError(CutlineError):
    """No backup matches, or a backups directory cannot be used."""


def backup_dir_name(marker_id: int) -> str:
    return f"marker-{marker_id:010d}"


def source_dir(backups: Path, source: str) -> Path:
    return Path(backups) / source


@dataclass(frozen=True)
class Backup:
    """One published backup, read from its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def marker_id(self) -> int:
        return int(self.manifest["marker_id"])

    @property
    def source(self) -> str:
        return str(self.manifest["source"])

    @property
    def t1_us(self) -> int:
        return int(self.manifest["t1_us"])

    @property
    def t1(self) -> str:
        return str(self.manifest["t1"])

    @property
    def t2(self) -> str:
        return str(self.manifest["t2"])

    @property
    def kind(self) -> str:
        """``full`` or ``incremental`` (manifests written before chains existed are full)."""
        return str(self.manifest.get("kind", "full"))

    @property
    def parent_marker_id(self) -> int | None:
        """The backup an incremental applies on top of (None for a full backup)."""
        parent = self.manifest.get("parent_marker_id")
        return None if parent is None else int(parent)

    @property
    def duckdb_path(self) -> Path:
        return self.path / self.manifest["duckdb"]

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["tables"])

    def avro_path(self, table: str) -> Path:
        return self.path / self.manifest["tables"][table]["avro"]

    def summary(self) -> dict[str, Any]:
        """The public shape used by ``cutline backups --json``."""
        return {
            "marker_id": self.marker_id,
            "t1": self.t1,
            "t2": self.t2,
            "source": self.source,
            "kind": self.kind,
            "parent_marker_id": self.parent_marker_id,
            "tables": {name: info["rows"] for name, info in self.tables.items()},
            "files": [str(self.path / f["path"]) for f in self.manifest["files"]],
        }


def read_backup(path: Path) -> Backup | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return Backup(path, manifest)


def list_backups(backups: Path, source: str | None = None) -> list[Backup]:
    """Every published backup, ordered by source then marker id."""
    root = Path(backups)
    if not root.exists():
        return []
    if not root.is_dir():
        raise CatalogError(f"--backups {root} is not a directory")
    sources = [root / source] if source else sorted(p for p in root.iterdir() if p.is_dir())
    found = []
    for sdir in sources:
        if not sdir.is_dir():
            continue
        for path in sorted(sdir.iterdir()):
            if path.name.startswith("marker-"):
                backup = read_backup(path)
                if backup is not None:
                    found.append(backup)
    return sorted(found, key=lambda b: (b.source, b.marker_id))


def has_backup(backups: Path, source: str, marker_id: int) -> bool:
    return (source_dir(backups, source) / backup_dir_name(marker_id) / MANIFEST).is_file()


def parse_instant(text: str) -> int:
    """ISO-8601 to microseconds since the epoch; a time without zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CatalogError(
            f"--as-of {text!r} is not an ISO-8601 time, e.g. 2026-11-25T10:15:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def select_backup(
    backups: Path, source: str, *, marker_id: int | None = None, as_of: str | None = None
) -> Backup:
    """The backup for a marker, or the newest with T1 <= as_of, or the newest of all."""
    candidates = list_backups(backups, source)
    if not candidates:
        raise CatalogError(
            f"no backups of source {source!r} under {backups}: run `cutline replicate` and "
            "cut a marker with `cutline mark`"
        )
    if marker_id is not None:
        for backup in candidates:
            if backup.marker_id == marker_id:
                return backup
        ids = ", ".join(str(b.marker_id) for b in candidates)
        raise CatalogError(f"no backup for marker {marker_id} of source {source!r}; have: {ids}")
    if as_of is not None:
        limit = parse_instant(as_of)
        eligible = [b for b in candidates if b.t1_us <= limit]
        if not eligible:
            raise CatalogError(
                f"no backup of source {source!r} is as old as {as_of}; the oldest is marker "
                f"{candidates[0].marker_id} at {candidates[0].t1}"
            )
        return max(eligible, key=lambda b: (b.t1_us, b.marker_id))
    return candidates[-1]
