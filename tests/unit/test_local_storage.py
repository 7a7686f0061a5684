"""The local filesystem backend of the backup store, on a real directory."""

from __future__ import annotations

import threading

import pytest

from backups.storage import BackupStorage, StorageError
from backups.storage.local import LocalStorage
from cutline.errors import DeadlineExceeded


def test_write_atomic_then_list_and_read_back(tmp_path):
    store: BackupStorage = LocalStorage(tmp_path)
    store.write_atomic("shop/marker-0000000001/manifest.json", b'{"a": 1}')
    store.write_atomic("shop/marker-0000000001/manifest.json", b'{"a": 2}')  # replaced whole
    assert store.list() == ["shop"]
    assert store.list("shop") == ["marker-0000000001"]
    assert store.list("shop/marker-0000000001") == ["manifest.json"]  # no temp left behind
    with store.open_read("shop/marker-0000000001/manifest.json") as f:
        assert f.read() == b'{"a": 2}'
    assert store.list("nothing-here") == []
    with pytest.raises(FileNotFoundError):
        store.open_read("shop/marker-0000000002/manifest.json")


def test_publish_makes_a_staged_directory_visible_whole(tmp_path):
    store = LocalStorage(tmp_path / "backups")
    staged = tmp_path / "backups" / "shop" / ".tmp-marker-0000000003"
    (staged / "avro").mkdir(parents=True)
    (staged / "avro" / "accounts.avro").write_bytes(b"rows")
    (staged / "manifest.json").write_text("{}")
    store.publish(staged, "shop/marker-0000000003")
    assert not staged.exists()
    assert store.list("shop") == ["marker-0000000003"]
    with store.open_read("shop/marker-0000000003/avro/accounts.avro") as f:
        assert f.read() == b"rows"


def test_delete_removes_the_directory_and_leaves_nothing_visible(tmp_path):
    store = LocalStorage(tmp_path)
    store.write_atomic("shop/marker-0000000001/manifest.json", b"{}")
    store.write_atomic("shop/marker-0000000002/manifest.json", b"{}")
    store.delete("shop/marker-0000000001")
    assert store.list("shop") == ["marker-0000000002"]
    with pytest.raises(StorageError, match="cannot remove"):
        store.delete("shop/marker-0000000009")


def test_keys_never_leave_the_backups_directory(tmp_path):
    with pytest.raises(StorageError, match="leaves the backups directory"):
        LocalStorage(tmp_path / "backups").local_path("../elsewhere")


def test_the_writer_lock_is_exclusive_and_waits_at_most_its_deadline(tmp_path):
    store = LocalStorage(tmp_path)
    first, second = store.lock("shop"), store.lock("shop")
    stop = threading.Event()
    first.acquire(1.0, stop)
    try:
        with pytest.raises(DeadlineExceeded, match="writer lock"):
            second.acquire(0.1, stop)
    finally:
        first.release()
    second.acquire(1.0, stop)  # free again once released
    second.release()
    assert first.path == tmp_path / "shop" / ".writer.lock"
