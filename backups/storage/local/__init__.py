"""The local filesystem backend: backups as directories under ``--backups``."""

from backups.storage.local.store import LocalStorage

__all__ = ["LocalStorage"]
