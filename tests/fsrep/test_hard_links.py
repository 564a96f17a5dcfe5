"""Hard links whose other names this mount never looked up: a change made
through an open file after its looked-up name was removed still reaches
the replica, under the name that remains."""

from __future__ import annotations

import os

from tests.conftest import Cluster, wait_for


def _remount_with_two_names(cluster: Cluster, data: bytes) -> None:
    """``a`` and ``b`` are one file; after a remount the kernel knows neither."""
    cluster.mount()
    (cluster.mnt / "a").write_bytes(data)
    os.link(cluster.mnt / "a", cluster.mnt / "b")
    cluster.umount()
    cluster.mount()


def _in_sync_with_nothing_dirty(cluster: Cluster) -> None:
    wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0,
             "InSync with nothing dirty")


def test_writes_after_the_opened_name_is_removed_reach_the_other_link(cluster: Cluster) -> None:
    _remount_with_two_names(cluster, b"orig")
    fd = os.open(cluster.mnt / "a", os.O_WRONLY | os.O_APPEND)
    try:
        os.unlink(cluster.mnt / "a")
        os.write(fd, b"-appended")
        os.pwrite(fd, b"!", 0)  # O_APPEND: Linux appends this too
        os.fsync(fd)
    finally:
        os.close(fd)
    _in_sync_with_nothing_dirty(cluster)
    cluster.assert_replicated()
    assert (cluster.secondary.replica_root() / "b").read_bytes() == b"orig-appended!"


def test_truncate_chmod_and_xattrs_through_the_removed_name_reach_the_other_link(cluster: Cluster) -> None:
    _remount_with_two_names(cluster, b"0123456789")
    fd = os.open(cluster.mnt / "a", os.O_RDWR)
    try:
        os.unlink(cluster.mnt / "a")
        os.ftruncate(fd, 4)
        os.fchmod(fd, 0o640)
        os.setxattr(fd, "user.kept", b"yes")
    finally:
        os.close(fd)
    _in_sync_with_nothing_dirty(cluster)
    cluster.assert_replicated()
    replica = cluster.secondary.replica_root() / "b"
    assert replica.read_bytes() == b"0123"
    assert replica.stat().st_mode & 0o777 == 0o640
    assert os.getxattr(replica, "user.kept") == b"yes"


def test_a_file_with_no_name_left_stays_local(mounted: Cluster) -> None:
    fd = os.open(mounted.mnt / "only", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.unlink(mounted.mnt / "only")
        os.write(fd, b"scratch data nobody can reach")
    finally:
        os.close(fd)
    assert mounted.status()["state"] == "InSync"
    mounted.assert_replicated() if any(mounted.mnt.iterdir()) else _replica_empty(mounted)


def _replica_empty(cluster: Cluster) -> None:
    cluster.umount()
    assert list(cluster.secondary.replica_root().iterdir()) == []
