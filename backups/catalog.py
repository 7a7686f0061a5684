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

from backups.storage.local import LocalStorage
from cutline.errors import ConfigError, CutlineError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


class CatalogError(CutlineError):
    """No backup matches, or a backups directory cannot be used."""


class InvalidInstant(CatalogError, ConfigError):
    """A time that is not ISO-8601: invalid input (exit status 2)."""


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


# The fields every reader relies on; a manifest without one of them is damaged.
REQUIRED_FIELDS: dict[str, type] = {
    "source": str,
    "marker_id": int,
    "t1": str,
    "t1_us": int,
    "t2": str,
    "duckdb": str,
    "tables": dict,
    "files": list,
}


def manifest_problem(path: Path) -> str | None:
    """Why ``path`` (a backup directory) has no usable manifest; None when it has one."""
    loaded = _load_manifest(path)
    return loaded if isinstance(loaded, str) else None


def _load_manifest(path: Path) -> dict[str, Any] | str:
    """The manifest of the backup in ``path``, or why it cannot be used."""
    try:
        with LocalStorage(path).open_read(MANIFEST) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return f"{MANIFEST} is missing"
    except (OSError, ValueError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    if not isinstance(manifest, dict):
        return f"{MANIFEST} is not a JSON object"
    for name, kind in REQUIRED_FIELDS.items():
        if not isinstance(manifest.get(name), kind):
            return f"{MANIFEST} has no valid {name!r}"
    return manifest


def read_backup(path: Path) -> Backup | None:
    """The backup in ``path``; None if its manifest is missing, unreadable or incomplete."""
    loaded = _load_manifest(path)
    return None if isinstance(loaded, str) else Backup(path, loaded)


def _backup_dirs(backups: Path, source: str | None) -> list[Path]:
    """Every ``marker-*`` directory (published backups; ``.tmp-*`` ones are not)."""
    root = Path(backups)
    if not root.exists():
        return []
    if not root.is_dir():
        raise CatalogError(f"--backups {root} is not a directory")
    store = LocalStorage(root)
    sources = [source] if source else store.list()  # a file lists nothing: not a source
    return [
        store.local_path(f"{name}/{entry}")
        for name in sources
        for entry in store.list(name)
        if entry.startswith("marker-")
    ]


def list_backups(backups: Path, source: str | None = None) -> list[Backup]:
    """Every published backup, ordered by source then marker id.

    A backup directory whose manifest cannot be used is left out here;
    :func:`damaged_backup_dirs` names those (``cutline verify`` reports them).
    """
    found = [b for b in map(read_backup, _backup_dirs(backups, source)) if b is not None]
    return sorted(found, key=lambda b: (b.source, b.marker_id))


def damaged_backup_dirs(backups: Path, source: str | None = None) -> list[tuple[Path, str]]:
    """Backup directories whose manifest is missing, unreadable or incomplete, and why.

    Publication renames a complete directory, manifest included, into place, so a
    ``marker-*`` directory without a usable manifest is damaged, never half-written.
    """
    damaged = []
    for path in _backup_dirs(backups, source):
        problem = manifest_problem(path)
        if problem is not None:
            damaged.append((path, problem))
    return damaged


def marker_id_of_dir(path: Path) -> int | None:
    """The marker id in a backup directory's name (``marker-0000000007``: 7)."""
    digits = path.name.removeprefix("marker-")
    return int(digits) if digits.isdigit() else None


def has_backup(backups: Path, source: str, marker_id: int) -> bool:
    return (source_dir(backups, source) / backup_dir_name(marker_id) / MANIFEST).is_file()


def parse_instant(text: str) -> int:
    """ISO-8601 to microseconds since the epoch; a time without zone is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInstant(
            f"--as-of {text!r} is not an ISO-8601 time, e.g. 2026-11-25T10:15:00Z"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000)


def sources_with_backups(backups: Path) -> list[str]:
    """The sources that have at least one published backup under ``backups``."""
    return sorted({b.source for b in list_backups(backups)})


def default_source(backups: Path, source: str | None) -> str:
    """``source`` if given, else the only source under ``backups``; an error lists several.

    A reader should not need ``--source`` to read a backups directory of one source, and
    must not guess in a directory of several.
    """
    if source:
        return source
    found = sources_with_backups(backups)
    if len(found) == 1:
        return found[0]
    if not found:
        raise CatalogError(
            f"no backups under {backups}: run `cutline replicate` and cut a marker with "
            "`cutline mark`"
        )
    raise CatalogError(
        f"{backups} holds backups of {len(found)} sources ({', '.join(found)}): pass --source "
        "with one of them"
    )


def backups_of_source(backups: Path, source: str) -> list[Backup]:
    """Every backup of ``source``, oldest first; an error that says what to do if none."""
    found = list_backups(backups, source)
    if not found:
        raise CatalogError(
            f"no backups of source {source!r} under {backups}: run `cutline replicate` and "
            "cut a marker with `cutline mark`"
        )
    return found


def select_backup(
    backups: Path, source: str, *, marker_id: int | None = None, as_of: str | None = None
) -> Backup:
    """The backup for a marker, or the newest with T1 <= as_of, or the newest of all."""
    limit = None if as_of is None else parse_instant(as_of)  # bad input first: exit 2
    candidates = backups_of_source(backups, source)
    if marker_id is not None:
        for backup in candidates:
            if backup.marker_id == marker_id:
                return backup
        damaged = source_dir(backups, source) / backup_dir_name(marker_id)
        problem = manifest_problem(damaged) if damaged.is_dir() else None
        if problem is not None:
            raise CatalogError(
                f"backup {marker_id} of source {source!r} ({damaged}) is damaged: {problem}; "
                "run `cutline verify`, and use another backup or restore that directory "
                "from a copy"
            )
        ids = ", ".join(str(b.marker_id) for b in candidates)
        raise CatalogError(f"no backup for marker {marker_id} of source {source!r}; have: {ids}")
    if as_of is not None and limit is not None:
        eligible = [b for b in candidates if b.t1_us <= limit]
        if not eligible:
            raise CatalogError(
                f"no backup of source {source!r} is as old as {as_of}; the oldest is marker "
                f"{candidates[0].marker_id} at {candidates[0].t1}"
            )
        return max(eligible, key=lambda b: (b.t1_us, b.marker_id))
    return candidates[-1]
