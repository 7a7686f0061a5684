"""``cutline verify`` finds damaged backups; ``cutline prune`` keeps what chains need."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import fastavro
import pytest
from test_chain import HISTORY, LOG_NAME, SOURCE, Replica

from backups import retention
from backups.catalog import MANIFEST, Backup, list_backups, source_dir
from backups.chain import resolved_database
from backups.storage.local.durable import TEMP_PREFIX, sha256_of
from backups.verify import verify_backup
from consumers.coordinator import WriterLock
from consumers.snapshotter import write_backup
from cutline.cli import main
from producers.markers import format_time


def write_history(root: Path, count: int, full_every: int) -> list[Backup]:
    """``count`` backups of a changing replica; kinds follow ``full_every``."""
    replica = Replica(root / "replica")
    try:
        return [
            write_backup(
                replica.root,
                root / "backups",
                replica.cut(m, HISTORY[(m - 1) % len(HISTORY)]),
                writer="t",
                full_every=full_every,
            )
            for m in range(1, count + 1)
        ]
    finally:
        replica.close()


@pytest.fixture
def chain(tmp_path) -> list[Backup]:
    """F1 I2 I3 F4 I5 I6 F7 (F full, I incremental)."""
    backups = write_history(tmp_path, 7, full_every=3)
    assert [b.kind[0].upper() for b in backups] == list("FIIFIIF")
    return backups


def verify(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["verify", "--backups", str(tmp_path / "backups"), *extra])
    return code, capsys.readouterr().out


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# -- verify ------------------------------------------------------------------------------------


def test_verify_intact_backups_exits_0_with_a_summary(chain, tmp_path, capsys):
    code, out = verify(tmp_path, capsys)
    assert code == 0
    assert "verified 7 backup(s): 7 intact, 0 damaged" in out
    assert out.count("ok ") == 7


def test_verify_catches_a_flipped_byte(chain, tmp_path, capsys):
    second = chain[1]
    avro = second.avro_path("accounts")
    flip_byte(avro, avro.stat().st_size // 2)
    code, out = verify(tmp_path, capsys)
    assert code == 1
    rel = avro.relative_to(second.path)
    assert f"marker 2 ({second.path}): file {rel} does not match its SHA-256" in out
    # Marker 3 builds on marker 2, so its chain is reported damaged too.
    assert "marker 3" in out and "needs backup 2, which is damaged" in out
    assert "5 intact, 2 damaged" in out


def test_verify_catches_a_truncated_file(chain, tmp_path, capsys):
    fourth = chain[3]
    data = fourth.duckdb_path.read_bytes()
    fourth.duckdb_path.write_bytes(data[: len(data) // 2])
    code, out = verify(tmp_path, capsys, "--source", SOURCE, "--marker", "4")
    assert code == 1
    assert f"marker 4 ({fourth.path}): file backup.duckdb has {len(data) // 2} bytes" in out
    assert "(truncated)" in out
    assert "verified 1 backup(s): 0 intact, 1 damaged" in out


def test_verify_json_names_marker_and_file(chain, tmp_path, capsys):
    (chain[0].path / chain[0].manifest["tables"][LOG_NAME]["avro"]).write_bytes(b"")
    code, out = verify(tmp_path, capsys, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    first = next(b for b in report["backups"] if b["marker_id"] == 1)
    assert first["ok"] is False and "avro/log__x_____.avro" in first["problems"][0]
    assert next(b for b in report["backups"] if b["marker_id"] == 7)["ok"] is True


def _rewrite_avro(backup: Backup, table: str, change) -> dict:
    """Rewrite ``table``'s Avro file with ``change`` applied to its records, and give the
    manifest the new file's size and checksum, so only a comparison of contents sees it."""
    avro = backup.avro_path(table)
    with open(avro, "rb") as f:
        reader = fastavro.reader(f)
        schema, records = reader.writer_schema, list(reader)
        header = {k: v for k, v in reader.metadata.items() if k.startswith("cutline.")}
    change(records)
    with open(avro, "wb") as f:
        fastavro.writer(f, schema, records, metadata=header)
    manifest = json.loads((backup.path / MANIFEST).read_text())
    for entry in manifest["files"]:
        if entry["path"] == manifest["tables"][table]["avro"]:
            entry["bytes"], entry["sha256"] = avro.stat().st_size, sha256_of(avro)
    (backup.path / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_verify_compares_avro_contents_not_just_checksums(chain, tmp_path):
    """An Avro file with other rows, its manifest checksum updated, is still caught."""
    backup = chain[0]

    def change(records):
        records[0]["balance"] = records[0]["balance"] + 1

    manifest = _rewrite_avro(backup, "accounts", change)
    problems = verify_backup(Backup(backup.path, manifest))
    assert len(problems) == 1
    assert "does not hold the rows of table 'accounts'" in problems[0]
    assert "1 rows of the DuckDB table are not in it" in problems[0]


@pytest.mark.parametrize("batch_rows", [1, 3])
def test_verify_streams_avro_rows_in_batches_and_still_sees_one_changed_row(
    chain, tmp_path, monkeypatch, batch_rows
):
    """The Avro side goes into a scratch DuckDB file in batches, its connection renewed
    every few rows: an intact chain verifies, and one changed value is one row each way."""
    import tempfile

    from backups import verify as verify_module
    from backups.writer.duckdb_format import DuckDBFile

    renewals: list[int] = []
    original = DuckDBFile.renew

    def counted(self):
        renewals.append(1)
        return original(self)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(verify_module, "AVRO_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(DuckDBFile, "RENEW_ROWS", 2)
    monkeypatch.setattr(DuckDBFile, "renew", counted)
    assert all(verify_backup(b) == [] for b in chain)
    assert len(renewals) > len(chain)  # within tables, not only before each comparison
    backup = chain[0]

    def change(records):
        records[-1]["owner"] = "someone else"

    manifest = _rewrite_avro(backup, "accounts", change)
    (problem,) = verify_backup(Backup(backup.path, manifest))
    assert "1 rows of the DuckDB table are not in it and 1 of its rows are not" in problem
    assert list(scratch.iterdir()) == []  # the scratch files are gone


def test_verify_checks_row_counts(chain):
    backup = chain[1]  # an incremental: its changed count and its resolved full count
    manifest = json.loads((backup.path / MANIFEST).read_text())
    manifest["tables"]["accounts"]["rows"] += 1
    manifest["tables"]["order lines"]["changed"] += 1
    problems = verify_backup(Backup(backup.path, manifest))
    assert any(
        "'order lines' in backup.duckdb has 2 rows, the manifest says 3" in p for p in problems
    )
    assert any("'accounts' resolved through its chain has 19 rows" in p for p in problems)


def test_verify_reports_a_missing_chain(chain, tmp_path, capsys):
    import shutil

    shutil.rmtree(chain[3].path)  # full backup 4, needed by 5 and 6
    code, out = verify(tmp_path, capsys)
    assert code == 1
    assert "marker 5" in out and "needs backup 4" in out
    assert "4 intact, 2 damaged" in out


def test_verify_reports_a_backup_whose_manifest_is_unreadable(chain, tmp_path, capsys):
    """A flipped byte can make manifest.json invalid JSON: the catalog can no longer list
    that backup, so verify must name it rather than call the rest intact."""
    newest = chain[6]
    flip_byte(newest.path / MANIFEST, 0)
    code, out = verify(tmp_path, capsys)
    assert code == 1
    assert f"DAMAGED  {SOURCE} marker 7 (unreadable)" in out
    assert f"marker 7 ({newest.path}): manifest.json is unreadable" in out
    assert "restore the directory from a copy" in out
    assert "verified 7 backup(s): 6 intact, 1 damaged" in out
    code, out = verify(tmp_path, capsys, "--marker", "7", "--json")
    report = json.loads(out)
    assert code == 1
    assert [(b["marker_id"], b["ok"], b["kind"]) for b in report["backups"]] == [(7, False, None)]


def test_a_manifest_without_a_field_is_damaged_not_a_crash(chain, tmp_path, capsys):
    manifest = chain[6].path / MANIFEST
    manifest.write_text(manifest.read_text().replace('"source"', '"sourcf"'))
    backups = str(tmp_path / "backups")
    assert main(["backups", "--backups", backups]) == 0
    assert main(["query", "--backups", backups, "--source", SOURCE, "SELECT 1"]) == 0
    capsys.readouterr()
    code, out = verify(tmp_path, capsys)
    assert code == 1
    assert "manifest.json has no valid 'source'" in out
    code = main(["query", "--backups", backups, "--source", SOURCE, "--marker", "7", "SELECT 1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "backup 7 of source 'chains'" in err and "is damaged" in err
    assert "run `cutline verify`" in err


def test_verify_catches_a_manifest_t1_that_its_files_contradict(chain, tmp_path, capsys):
    """T1 is what --as-of selects by; the manifest has no checksum, so the checksummed
    Avro headers must vouch for it."""
    backup = chain[0]
    manifest = json.loads((backup.path / MANIFEST).read_text())
    manifest["t1_us"] += 3_600_000_000
    manifest["t1"] = format_time(manifest["t1_us"])  # consistent with itself
    (backup.path / MANIFEST).write_text(json.dumps(manifest))
    code, out = verify(tmp_path, capsys, "--marker", "1")
    assert code == 1
    assert f"{backup.avro_path('accounts').relative_to(backup.path)} names t1" in out
    assert f"the manifest says '{manifest['t1']}'" in out
    manifest["t1_us"] += 1  # now t1 and t1_us disagree too
    (backup.path / MANIFEST).write_text(json.dumps(manifest))
    code, out = verify(tmp_path, capsys, "--marker", "1")
    assert code == 1
    assert "the manifest's t1" in out and "disagree" in out


def test_verify_without_backups_is_an_error(tmp_path, capsys):
    assert main(["verify", "--backups", str(tmp_path)]) == 1
    assert "no backups to verify" in capsys.readouterr().err


# -- prune -------------------------------------------------------------------------------------


def marker_ids(tmp_path: Path) -> list[int]:
    return [b.marker_id for b in list_backups(tmp_path / "backups", SOURCE)]


def prune(tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["prune", "--backups", str(tmp_path / "backups"), *extra])
    return code, capsys.readouterr().out


def test_prune_keeps_the_chains_of_kept_incrementals(chain, tmp_path, capsys):
    code, out = prune(tmp_path, capsys, "--keep-last", "2")
    assert code == 0
    assert marker_ids(tmp_path) == [4, 5, 6, 7]
    assert f"{SOURCE}: removed 1, 2, 3" in out
    assert f"{SOURCE}: kept 4 for the chain of incremental 6" in out
    assert f"{SOURCE}: kept 5 for the chain of incremental 6" in out
    leftovers = [p.name for p in (tmp_path / "backups" / SOURCE).iterdir()]
    assert not any(name.startswith(TEMP_PREFIX) for name in leftovers)
    for backup in list_backups(tmp_path / "backups", SOURCE):
        assert verify_backup(backup) == []
        with resolved_database(backup) as path:
            assert path.is_file()


def test_prune_keep_last_one_on_a_full_removes_every_other(chain, tmp_path, capsys):
    code, out = prune(tmp_path, capsys, "--keep-last", "1", "--source", SOURCE)
    assert code == 0
    assert marker_ids(tmp_path) == [7]
    assert "kept" in out and "for the chain" not in out


def test_prune_dry_run_removes_nothing(chain, tmp_path, capsys):
    before = sorted(p.name for p in (tmp_path / "backups" / SOURCE).iterdir())
    code, out = prune(tmp_path, capsys, "--keep-last", "2", "--dry-run")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "backups" / SOURCE).iterdir()) == before
    assert f"{SOURCE}: would remove 1, 2, 3" in out


def test_prune_json(chain, tmp_path, capsys):
    code, out = prune(tmp_path, capsys, "--keep-last", "3", "--json")
    report = json.loads(out)["sources"][0]
    assert code == 0
    assert report["kept"] == [5, 6, 7]
    assert report["kept_for_chains"] == {"4": [5, 6]}
    assert report["removed"] == [3, 2, 1]


def test_prune_hides_a_backup_before_deleting_it(chain, tmp_path, monkeypatch):
    """When deletion starts, the backup is already out of the catalog, under a .tmp- name."""
    seen: list[tuple[str, list[int]]] = []
    real_rmtree = shutil.rmtree

    def observing_rmtree(path, *args, **kwargs):
        seen.append((Path(path).name, marker_ids(tmp_path)))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", observing_rmtree)  # the store deletes
    retention.prune(tmp_path / "backups", 2)
    assert [name.startswith(f"{TEMP_PREFIX}prune-marker-") for name, _ in seen] == [True] * 3
    # Newest first, and each one is gone from the listing before it is deleted.
    assert [listed for _, listed in seen] == [[1, 2, 4, 5, 6, 7], [1, 4, 5, 6, 7], [4, 5, 6, 7]]


def test_prune_waits_for_the_writer_lock_and_removes_nothing_without_it(chain, tmp_path):
    """A backup being written (by replicate or replay) may be an incremental reading its
    parent's chain: prune must not remove backups under it."""
    lock = WriterLock(source_dir(tmp_path / "backups", SOURCE))
    lock.acquire(1.0, threading.Event())
    try:
        with pytest.raises(retention.PruneError) as info:
            retention.prune(tmp_path / "backups", 1, lock_deadline_s=0.2)
    finally:
        lock.release()
    assert marker_ids(tmp_path) == [1, 2, 3, 4, 5, 6, 7]
    assert "nothing removed" in str(info.value) and "run prune again later" in str(info.value)
    plans = retention.prune(tmp_path / "backups", 1, lock_deadline_s=0.2)
    assert [b.marker_id for b in plans[0].remove] == [6, 5, 4, 3, 2, 1]
    assert marker_ids(tmp_path) == [7]


def test_prune_keep_last_must_be_positive(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["prune", "--backups", str(tmp_path), "--keep-last", "0"])
    assert info.value.code == 2


# -- command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("verify", ["--backups", "--source", "--marker", "--json", "SHA-256", "Exit status 1"]),
        ("prune", ["--backups", "--keep-last", "--source", "--dry-run", ".tmp-", "chain"]),
        ("replicate", ["--full-every", "incrementals"]),
    ],
)
def test_help_teaches_the_new_options(capsys, command, words):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for word in words:
        assert word in out, word


def test_replicate_full_every_parses_and_defaults_to_one(capsys):
    from cutline.cli import build_parser

    base = ["replicate", "--replica", "r", "--backups", "b"]
    assert build_parser().parse_args(base).full_every == 1
    assert build_parser().parse_args([*base, "--full-every", "3"]).full_every == 3
    with pytest.raises(SystemExit) as info:
        main([*base, "--full-every", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
