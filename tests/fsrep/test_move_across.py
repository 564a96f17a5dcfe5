"""``fsrep-move --to STORE2`` with STORE2 on another file system (a loop
mounted ext4 image): the group's data is copied while a writer runs, the
mount switches to the copy, and the relationship goes on. The writer's
acknowledged records are all there (a ledger, written through one
descriptor opened before the move), the new place equals the replica by
digest, only the writer's bytes cross the link (counted at a FaultProxy),
and an abort (frozen mid-copy with fsfreeze) leaves everything as it was."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fsrep._config import GroupRecord
from fsrep._move_across import settle
from tests.conftest import SESSION_CLOSED, UNCLEAN_SHUTDOWN, Cluster, wait_for, write_random
from tests.fsrep.test_move import (
    GROUP,
    MOVE,
    RECORD,
    assert_ledger,
    assert_moved_group_replicated,
    group_of,
    move_while_writing,
)

KiB, MiB = 1024, 1024 * 1024
ABORTED = r"the move to .* aborted; the copy is removed"


@contextlib.contextmanager
def disk(base: Path, name: str, size: int) -> Iterator[Path]:
    """An ext4 file system of *size* bytes in a loop-mounted image."""
    image, mountpoint = base / f"{name}.img", base / name
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fsfreeze", "-u", str(mountpoint)], capture_output=True)
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        image.unlink()


@pytest.fixture
def disk2(tmp_path: Path) -> Iterator[Path]:
    with disk(tmp_path, "disk2", 512 * MiB) as mountpoint:
        yield mountpoint


def fsrep_move(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOVE, *args], capture_output=True, text=True, timeout=timeout)


def group_tree(m: Path) -> None:
    (m / GROUP / "disks" / "old").mkdir(parents=True)
    write_random(m / GROUP / "disks" / "root.img", 24)
    with open(m / GROUP / "disks" / "sparse.img", "wb") as f:
        f.truncate(64 * MiB)
        f.write(b"boot")
    os.link(m / GROUP / "disks" / "root.img", m / GROUP / "disks" / "old" / "root.bak")
    os.symlink("disks/root.img", m / GROUP / "current")
    os.setxattr(m / GROUP / "disks", "user.owner", b"ops")
    os.mkfifo(m / GROUP / "pipe")


def test_a_group_moves_to_another_disk_while_a_writer_runs(proxied: Cluster, disk2: Path) -> None:
    proxied.mount("--group", GROUP)
    m = proxied.mnt
    group_tree(m)
    reader = open(m / GROUP / "disks" / "root.img", "rb")  # open across the move, read after it
    target = disk2 / "vm1"

    def after() -> None:
        (m / GROUP / "disks" / "new.img").write_bytes(b"after")
        os.rename(m / GROUP / "disks" / "old", m / GROUP / "disks" / "older")

    writer, before, moved = move_while_writing(proxied, target, after)
    assert moved["copied_bytes"] >= 24 * MiB, moved
    assert moved["pause_seconds"] < 1.0, moved
    written = (writer.acked - before) * RECORD + len(b"after")
    carried = proxied.proxy.bytes_to_secondary
    assert carried <= written * 1.1 + 64 * KiB, f"{carried} bytes crossed for {written} bytes written"
    assert writer.longest < 2.0, f"the writer waited {writer.longest:.3f}s for a write"
    assert reader.read(4096) == (m / GROUP / "disks" / "root.img").read_bytes()[:4096]
    assert os.fstat(reader.fileno()).st_ino == os.stat(m / GROUP / "disks" / "root.img").st_ino
    reader.close()
    status = group_of(proxied)
    assert (status["state"], status["data_dir"]) == ("InSync", str(target)), status
    assert status["move"]["phase"] == "done", status["move"]
    assert list((proxied.primary_store / GROUP).iterdir()) == [], "the group's old place is not an empty stand-in"
    assert os.stat(target / "disks" / "root.img").st_ino == os.stat(target / "disks" / "older" / "root.bak").st_ino
    assert_ledger(m / GROUP / "journal", writer.acked)
    assert_ledger(target / "journal", writer.acked)
    assert_moved_group_replicated(proxied, target)
    proxied.mount("--group", GROUP)  # a later mount serves the group from the other disk
    assert_ledger(m / GROUP / "journal", writer.acked)
    (m / GROUP / "after-remount").write_bytes(b"new")
    assert (target / "after-remount").read_bytes() == b"new"
    assert_moved_group_replicated(proxied, target)


@dataclass
class Moving:
    proc: subprocess.Popen[str]
    err: str = ""  # its stderr, once it ended


@contextlib.contextmanager
def frozen_move(cluster: Cluster, slow: Path) -> Iterator[Moving]:
    """``fsrep-move`` of the group to disk *slow*, frozen (fsfreeze) before
    the copy's first write: yields the mover once the daemon says it
    copies, and thaws the disk (then waits for the mover) after the block."""
    subprocess.run(["fsfreeze", "-f", str(slow)], check=True)
    moving = Moving(subprocess.Popen([*MOVE, str(cluster.mnt), "--group", GROUP, "--to", str(slow / "vm1")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        wait_for(lambda: (group_of(cluster).get("move") or {}).get("phase") == "copying", "the copy under way")
        yield moving
    finally:
        subprocess.run(["fsfreeze", "-u", str(slow)], check=True)
        try:
            _, moving.err = moving.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            moving.proc.kill()
            _, moving.err = moving.proc.communicate()


def assert_no_copy(slow: Path) -> None:
    target = slow / "vm1"
    assert not target.exists() or list(target.iterdir()) == [], f"the copy was left: {list(target.iterdir())}"


@pytest.mark.expect_log(ABORTED)
def test_an_abort_mid_copy_leaves_the_group_where_it_was_and_in_sync(tmp_path: Path, mounted_group: Cluster) -> None:
    m = mounted_group.mnt
    group_tree(m)
    with disk(tmp_path, "slow", 512 * MiB) as slow:
        with frozen_move(mounted_group, slow) as mover:
            (m / GROUP / "during").write_bytes(b"written while copying")
            aborted = fsrep_move(str(m), "--group", GROUP, "--abort")
            assert aborted.returncode == 0, aborted.stderr
        assert_no_copy(slow)
    err = mover.err
    assert mover.proc.returncode == 1, err
    assert "aborted" in err, err
    assert len(err.strip().splitlines()) == 1, err
    status = group_of(mounted_group)
    assert (status["state"], status["data_dir"], status["move"]["outcome"]) == ("InSync", "", "aborted"), status
    assert (m / GROUP / "during").read_bytes() == b"written while copying"
    assert_moved_group_replicated(mounted_group, mounted_group.primary_store / GROUP)


@pytest.mark.expect_log(ABORTED)
def test_ctrl_c_before_the_cutover_aborts(tmp_path: Path, mounted_group: Cluster) -> None:
    group_tree(mounted_group.mnt)
    with disk(tmp_path, "slow", 512 * MiB) as slow:
        with frozen_move(mounted_group, slow) as mover:
            mover.proc.send_signal(signal.SIGINT)
        assert_no_copy(slow)
    err = mover.err
    assert mover.proc.returncode == 1, err
    assert "aborting the move" in err, err
    assert "aborted" in err.splitlines()[-1], err
    assert group_of(mounted_group)["move"]["outcome"] == "aborted"
    assert_moved_group_replicated(mounted_group, mounted_group.primary_store / GROUP)


def test_a_disk_too_small_is_refused_in_one_line(tmp_path: Path, mounted_group: Cluster) -> None:
    m = mounted_group.mnt
    write_random(m / GROUP / "big", 40)
    with disk(tmp_path, "small", 64 * MiB) as small:
        done = fsrep_move(str(m), "--group", GROUP, "--to", str(small / "vm1"))
        assert done.returncode == 1, done.stdout
        assert "no space for the group's data" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not (small / "vm1").exists()
    assert group_of(mounted_group)["data_dir"] == ""


@pytest.fixture
def mounted_group(cluster: Cluster) -> Cluster:
    cluster.mount("--group", GROUP)
    return cluster


@pytest.mark.expect_log(r"a move .* was cut short")
def test_a_crash_mid_move_is_settled_at_the_next_mount(tmp_path: Path) -> None:
    store = tmp_path / "store"
    source = store / "vms" / "vm1"
    source.mkdir(parents=True)
    (source / "data").write_bytes(b"old")
    target = tmp_path / "disk2"
    target.mkdir()
    (target / "data").write_bytes(b"partial copy")
    record = GroupRecord(id="g", path="vms/vm1", policy="sync", secondary="127.0.0.1:9", moving_to=str(target),
                         moving_from=str(source), moving_phase="copy")
    assert settle(store, record) is None  # during the copy: the copy goes, the group stays
    assert list(target.iterdir()) == []
    assert (source / "data").read_bytes() == b"old"
    assert (record.store, record.moving_to, record.moving_phase) == ("", "", "")
    (target / "data").write_bytes(b"old")
    for phase, compared in (("cutover", True), ("cleanup", False)):
        (source / "data").write_bytes(b"old")
        record.store, record.moving_to, record.moving_from, record.moving_phase = (str(target), str(target),
                                                                                   str(source), phase)
        why = settle(store, record)
        assert (why is not None) == compared, (phase, why)
        assert list(source.iterdir()) == [], "the old data is removed once the copy is served"
        assert source.is_dir(), "the group's place in the store stays"
        assert (record.store, record.moving_phase) == (str(target), "")
        assert (target / "data").read_bytes() == b"old"


@pytest.mark.expect_log(r"a move .* was cut short while copying", SESSION_CLOSED, UNCLEAN_SHUTDOWN)
def test_a_primary_killed_mid_copy_mounts_again_with_the_group_where_it_was(tmp_path: Path,
                                                                            mounted_group: Cluster) -> None:
    m = mounted_group.mnt
    group_tree(m)
    with disk(tmp_path, "slow", 512 * MiB) as slow:
        with frozen_move(mounted_group, slow):
            pid = mounted_group.primary_pid()
            os.kill(pid, signal.SIGKILL)  # it dies once the disk thaws, its copying thread stuck on it until then
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the daemon to die")
        subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)
        mounted_group.mount("--group", GROUP)
        assert_no_copy(slow)
    status = group_of(mounted_group)
    assert status["data_dir"] == "", status
    assert os.readlink(m / GROUP / "current") == "disks/root.img"
    wait_for(lambda: group_of(mounted_group)["state"] == "InSync", "the group InSync again")
    assert_moved_group_replicated(mounted_group, mounted_group.primary_store / GROUP)


def test_open_directories_list_the_copy_after_a_move(tmp_path: Path, mounted_group: Cluster, disk2: Path) -> None:
    m = mounted_group.mnt
    group_tree(m)
    unread = os.open(m / GROUP / "disks", os.O_RDONLY | os.O_DIRECTORY)  # opened, not listed yet
    listed = os.open(m / GROUP, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert "disks" in os.listdir(listed)  # listed to its end before the move: its handle stays on the old one
        done = fsrep_move(str(m), "--group", GROUP, "--to", str(disk2 / "vm1"))
        assert done.returncode == 0, done.stderr
        (m / GROUP / "disks" / "after").write_bytes(b"")
        (m / GROUP / "after").write_bytes(b"")
        assert sorted(os.listdir(unread)) == sorted(os.listdir(disk2 / "vm1" / "disks"))
        assert "after" in os.listdir(unread)
        assert sorted(os.listdir(listed)) == sorted(os.listdir(disk2 / "vm1")), "a rewind lists the copy"
        assert "after" in os.listdir(listed)
    finally:
        os.close(unread)
        os.close(listed)
    assert_moved_group_replicated(mounted_group, disk2 / "vm1")
