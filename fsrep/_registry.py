"""A secondary store's registry of its replicas: ``.fsrep/replicas/<id>.json``
holds each replica's position (the last seq its data holds, the primary's
generations, the snapshots saved with it) and, once the replica was promoted
to be its group's primary, the record of that — which fences it: the daemon
applies nothing more to it.

One place reads and writes these files: the daemon (``_secondary``), and
``fsrep promote`` and ``fsrep demote`` (``_failover``), which may run while
the daemon is stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tracking

from ._config import META_DIR

REPLICA_KIND = "fsrep-replica"
PROMOTED = "promoted"  # the field of a promoted replica's record: {"generation", "from", "at", "snapshot"}


def registry_dir(store: Path) -> Path:
    return store / META_DIR / "replicas"


def position_file(store: Path, group: str) -> Path:
    return registry_dir(store) / f"{group}.json"


def save_position(path: Path, group: str, last_seq: int, generations: list[str], listed: list[list[Any]],
                  promoted: dict[str, Any] | None = None) -> None:
    """Durably record a replica's position: the last seq its data holds,
    its generation history (hex), the snapshots saved with it, and — once
    it was promoted — the record of that."""
    payload: dict[str, Any] = {"id": group, "last_seq": last_seq, "generations": generations, "snapshots": listed}
    if promoted is not None:
        payload[PROMOTED] = promoted
    tracking.save_state(path, REPLICA_KIND, payload)


def holds_primary_state(root: Path) -> bool:
    """Whether a replica's directory holds a primary store's state (it was
    promoted, or a demote did not finish): never a tree to apply frames to."""
    return (root / META_DIR / "groups").exists()
