"""Full resync on real mounts (``fsrep-resync --mode full``): the replica is
emptied and sent whole — every kind of entry, holes left out, a hard link
sent as a link, the group root's own attributes — while new changes wait
at the gate; a link lost half-way leaves the group stale, and the run
starts again, whole, when the link is back."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import LINK_CLOSED, RESYNC, SESSION_CLOSED, Cluster, fsrep_resync, wait_for

MiB = 1024 * 1024
SLOW = ["--rate-limit", "1M"]  # the lowest limit: a few MiB take seconds


def _every_kind_of_entry(mnt: Path) -> int:
    """Make one of each kind of entry through the mount; the bytes of data
    (not holes) a full copy of them sends."""
    (mnt / "dir" / "deep").mkdir(parents=True)
    os.setxattr(mnt / "dir", "user.note", b"on a directory")
    os.chown(mnt / "dir" / "deep", 1000, 1000)
    (mnt / "dir" / "deep" / "file").write_bytes(os.urandom(MiB + 5))
    os.setxattr(mnt / "dir" / "deep" / "file", "user.note", b"on a file")
    (mnt / "empty").touch()
    with open(mnt / "sparse", "wb") as f:
        f.write(os.urandom(64 * 1024))
        f.seek(40 * MiB)
        f.write(os.urandom(64 * 1024))
    os.link(mnt / "dir" / "deep" / "file", mnt / "hard")
    os.symlink("dir/deep/file", mnt / "symlink")
    os.mkfifo(mnt / "fifo")
    os.mknod(mnt / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(mnt, 0o750)
    os.setxattr(mnt, "user.note", b"on the root")
    return MiB + 5 + 2 * 64 * 1024


def _held_behind_fsreps_back(replica: Path) -> None:
    (replica / "stray").mkdir()
    (replica / "stray" / "f").write_text("not on the primary")
    with open(replica / "dir" / "deep" / "file", "r+b") as f:
        f.write(b"changed here")


def test_a_full_resync_sends_every_kind_of_entry_and_empties_the_replica_first(mounted: Cluster) -> None:
    data = _every_kind_of_entry(mounted.mnt)
    replica = mounted.secondary.replica_root()
    _held_behind_fsreps_back(replica)
    done = fsrep_resync(str(mounted.mnt), "--mode", "full", "--json")
    assert done.returncode == 0, done.stderr
    status = mounted.status()
    assert status["resync"]["mode"] == "full"
    assert status["resync"]["outcome"] == "InSync"
    assert status["resync"]["bytes_copied"] == data  # holes and the second name of the hard link cost nothing
    assert status["dirty_bytes"] == 0
    assert not (replica / "stray").exists()
    assert os.stat(replica / "hard").st_ino == os.stat(replica / "dir" / "deep" / "file").st_ino
    assert os.stat(replica / "sparse").st_blocks * 512 < 4 * MiB, "the hole was sent as data"
    assert stat.S_ISCHR(os.lstat(replica / "null").st_mode)
    assert os.lstat(replica / "null").st_rdev == os.makedev(1, 3)
    root = os.stat(replica)  # the digest leaves the root out
    assert stat.S_IMODE(root.st_mode) == 0o750
    assert os.getxattr(replica, "user.note") == b"on the root"
    mounted.assert_replicated()


def _start_slow_full_resync(cluster: Cluster) -> subprocess.Popen[str]:
    """Start ``fsrep-resync --mode full`` at the lowest rate and return it
    once the run has copied its first MiB."""
    follower = subprocess.Popen([*RESYNC, str(cluster.mnt), "--mode", "full", *SLOW], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (r := cluster.status()["resync"]) and r["mode"] == "full" and r["bytes_copied"] >= MiB,
             "the full resync to copy its first MiB")
    return follower


def test_a_change_made_during_a_full_resync_waits_for_it_and_is_replicated_after(mounted: Cluster) -> None:
    (mounted.mnt / "big").write_bytes(os.urandom(6 * MiB))  # at least two more seconds after the writer starts
    follower = _start_slow_full_resync(mounted)
    written = threading.Event()

    def writer() -> None:
        (mounted.mnt / "during").write_bytes(b"made while the full resync ran")
        written.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    copied = mounted.status()["resync"]["bytes_copied"]
    wait_for(lambda: mounted.status()["resync"]["bytes_copied"] >= copied + MiB, "another MiB copied")
    assert not written.is_set(), "a change went ahead while the full resync held changes"
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert written.wait(timeout=30), "the held change never went ahead"
    thread.join(timeout=30)
    assert (mounted.secondary.replica_root() / "during").read_bytes() == b"made while the full resync ran"
    mounted.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_a_link_lost_during_a_full_resync_leaves_the_group_stale_and_the_run_starts_again(proxied: Cluster) -> None:
    proxied.mount()
    (proxied.mnt / "big").write_bytes(os.urandom(4 * MiB))
    follower = _start_slow_full_resync(proxied)
    proxied.proxy.cut()
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 1, out
    status = wait_for(lambda: (s := proxied.status())["state"] == "OutOfSync" and s, "OutOfSync after the cut")
    assert status["stale_reason"]
    proxied.proxy.restore()
    run = proxied.wait_state("InSync", timeout=60)["resync"]
    assert (run["mode"], run["outcome"]) == ("full", "InSync")
    assert run["restarts"] >= 1  # from the start: what the cut run sent is not trusted
    assert run["bytes_copied"] >= 4 * MiB + MiB
    proxied.assert_replicated()
