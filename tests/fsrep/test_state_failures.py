"""A state file under ``.fsrep/`` that cannot be saved is never only
logged: the change it should cover fails (the caller sees the error), or
the group's status shows the fault with its reason until it clears."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracking
from tests.conftest import LINK_CLOSED, SESSION_CLOSED, Cluster, fsrep_resync, wait_for


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """*directory* read-only for everyone, root too (a read-only bind mount
    over itself), until the block ends."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def _groups_dir(cluster: Cluster) -> Path:
    return cluster.primary_store / ".fsrep" / "groups"


def _faults(cluster: Cluster) -> list[str]:
    return cluster.status()["faults"]


def _write(path: Path, data: bytes, offset: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


CANNOT_SAVE = r" ERROR \S+: group \S+: cannot "
ACTIVITY = CANNOT_SAVE + r"save the activity log \(\[Errno 30\] Read-only file system"
STALE = CANNOT_SAVE + r"record that the replica is stale \(\[Errno 30\] Read-only file system"
DIRTY = CANNOT_SAVE + r"save the dirty set \(\[Errno 30\] Read-only file system"
SNAPSHOTS = CANNOT_SAVE + r"save the snapshots \(\[Errno 30\] Read-only file system"  # saved with the dirty set


@pytest.mark.expect_log(ACTIVITY)
def test_a_change_the_activity_log_cannot_record_fails_and_status_says_why(mounted: Cluster) -> None:
    _write(mounted.mnt / "f", b"x")
    far = 64 * tracking.EXTENT_SIZE  # an extent not active yet: the log must be saved before the write
    with read_only(_groups_dir(mounted)):
        with pytest.raises(OSError) as caught:
            _write(mounted.mnt / "f", b"y" * 4096, far)
        assert caught.value.errno == errno.EROFS
        faults = _faults(mounted)
        assert any("cannot save the activity log" in fault for fault in faults), faults
        assert mounted.status()["state"] == "InSync"  # nothing was applied on either side
    assert (mounted.mnt / "f").stat().st_size == 1  # the refused write was not applied
    _write(mounted.mnt / "f", b"z" * 4096, far)  # accepted again, and the fault cleared
    assert _faults(mounted) == []
    assert (mounted.mnt / "f").stat().st_size == far + 4096
    mounted.assert_replicated()


@pytest.mark.expect_log(STALE, DIRTY, SNAPSHOTS, LINK_CLOSED, SESSION_CLOSED)
def test_a_stale_mark_that_cannot_be_saved_refuses_local_changes_until_it_can(mounted: Cluster) -> None:
    _write(mounted.mnt / "f", b"a")
    with read_only(_groups_dir(mounted)):
        mounted.secondary.stop()
        mounted.wait_state("OutOfSync")
        assert any("cannot record that the replica is stale" in f for f in _faults(mounted))
        with pytest.raises(OSError) as caught:
            _write(mounted.mnt / "g", b"b")
        assert caught.value.errno == errno.EROFS
        assert not (mounted.primary_store / "g").exists()
    _write(mounted.mnt / "g", b"b")  # the mark is saved first, then the change is made
    assert not any("cannot record that the replica is stale" in f for f in _faults(mounted))
    wait_for(lambda: _faults(mounted) == [], "the dirty set's next save to clear its fault")
    mounted.secondary.start()
    assert fsrep_resync(str(mounted.mnt)).returncode == 0
    mounted.wait_state("InSync")
    mounted.assert_replicated()


@pytest.mark.expect_log(DIRTY, SNAPSHOTS, LINK_CLOSED, SESSION_CLOSED)
def test_a_dirty_set_that_cannot_be_saved_is_a_fault_in_status_until_saved(mounted: Cluster) -> None:
    mounted.secondary.stop()
    mounted.wait_state("OutOfSync")
    _write(mounted.mnt / "f", b"a" * 4096)  # the stale mark and the activity log are saved now
    with read_only(_groups_dir(mounted)):
        _write(mounted.mnt / "f", b"b" * 4096)  # the same extent: nothing more to record before the change
        wait_for(lambda: any("cannot save the dirty set" in f for f in _faults(mounted)),
                 "the dirty-set fault in status")
    wait_for(lambda: _faults(mounted) == [], "the fault to clear")
    mounted.secondary.start()
    assert fsrep_resync(str(mounted.mnt)).returncode == 0
    mounted.wait_state("InSync")
    mounted.assert_replicated()
