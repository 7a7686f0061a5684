"""The replica directory replay rebuilds: fresh shards only, never applied twice."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from consumers.replica import shard_path
from cutline.errors import ConfigError

SHARD_GLOB = "partition-*.sqlite"
SHARD_COMPANIONS = ("-wal", "-shm", "-journal")


def prepare_replica(
    replica_dir: Path, source: str, *, force: bool, progress: Callable[[str], None]
) -> None:
    """Refuse a replica that already has this source's shards, or wipe them with ``force``.

    Replay rebuilds from offset 0, so old shards would be applied twice. Only this
    source's shard files are removed; never use ``force`` on the replica of a running
    ``cutline replicate``.
    """
    directory = shard_path(replica_dir, source, 0).parent
    try:
        Path(replica_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--replica {replica_dir} cannot be used: {exc}") from exc
    if not os.access(replica_dir, os.W_OK):
        raise ConfigError(f"--replica {replica_dir} is not writable")
    shards = sorted(directory.glob(SHARD_GLOB)) if directory.is_dir() else []
    if not shards:
        return
    if not force:
        raise ConfigError(
            f"--replica {replica_dir} already holds {len(shards)} shards of source {source!r} "
            f"({directory}); replay rebuilds the replica from the start of the topic: pass "
            "--force to delete them first (never on the replica of a running `cutline "
            "replicate`), or give another --replica"
        )
    progress(
        f"--force: deleting the {len(shards)} replica shards of source {source!r} in "
        f"{directory} before rebuilding them"
    )
    for shard in shards:
        for path in (shard, *(Path(f"{shard}{suffix}") for suffix in SHARD_COMPANIONS)):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot delete replica shard {path}: {exc}") from exc
