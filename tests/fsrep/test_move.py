"""``fsrep-move MOUNTPOINT --group ID --to STORE2``: a group's data moved
to another directory of the same file system while a writer runs. The
writer's acknowledged records (a ledger) are all there afterwards, the
new place equals the replica by digest, nothing but the writer's own
bytes crosses the link (counted at a FaultProxy), and later mounts serve
the group from its new place."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fsrep._config import GroupRecord
from fsrep._digest import tree_differences
from fsrep._move import settle_interrupted
from tests.conftest import Cluster, wait_for, write_random

KiB = 1024
MOVE = [sys.executable, "-m", "tools.move"]
RECORD = 4 * KiB
MAX_RECORDS = 20_000  # the writer's bound
GROUP = "vms/vm1"


def fsrep_move(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOVE, *args], capture_output=True, text=True, timeout=120)


class Writer(threading.Thread):
    """Appends numbered records to a file, fsync after each: a record is
    acknowledged once its fsync returned. The file is opened once, before
    the move, and written through the same descriptor after it."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.acked = 0
        self.longest = 0.0
        self.error: BaseException | None = None
        self.halt = threading.Event()
        self.refused = threading.Event()  # set when the mount refused a write with EROFS (the writer stops)
        self.read_only_ends = False  # whether EROFS ends the writer (a group moved away) rather than fails it

    def run(self) -> None:
        try:
            with open(self.path, "ab", buffering=0) as f:
                for n in range(MAX_RECORDS):
                    if self.halt.is_set():
                        return
                    started = time.monotonic()
                    f.write(record(n))
                    os.fsync(f.fileno())
                    self.longest = max(self.longest, time.monotonic() - started)
                    self.acked = n + 1
        except OSError as exc:
            if self.read_only_ends and exc.errno == errno.EROFS:
                self.refused.set()
            else:
                self.error = exc
        except BaseException as exc:  # the test reports it
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the writer hung"
        assert self.error is None, f"the writer failed: {self.error!r}"


def record(n: int) -> bytes:
    return f"{n:08d}".encode().ljust(RECORD, b".")


def assert_ledger(path: Path, acked: int) -> None:
    data = path.read_bytes()
    assert len(data) >= acked * RECORD, f"{path}: {len(data) // RECORD} records, {acked} were acknowledged"
    for n in range(acked):
        assert data[n * RECORD:(n + 1) * RECORD] == record(n), f"{path}: record {n} is not what was written"


def move_while_writing(cluster: Cluster, target: Path, after: Callable[[], None] = lambda: None
                       ) -> tuple[Writer, int, dict]:
    """Move the group to *target* while a Writer appends to its journal
    (through the cluster's proxy, its counters reset when the move starts),
    then do *after* while it still writes; the writer (stopped), its acked
    records when the move began, and the move's JSON outcome."""
    assert cluster.proxy is not None
    writer = Writer(cluster.mnt / GROUP / "journal")
    writer.start()
    try:
        wait_for(lambda: writer.acked >= 20, "the writer under way")
        cluster.proxy.reset_counters()
        before = writer.acked
        done = fsrep_move(str(cluster.mnt), "--group", "/" + GROUP, "--to", str(target), "--json")
        assert done.returncode == 0, done.stderr
        moved = json.loads(done.stdout)
        after_move = writer.acked
        wait_for(lambda: writer.acked >= after_move + 20, "writes after the move")
        after()
    finally:
        writer.stop()
    assert (moved["destination"], moved["state"]) == (str(target), "InSync"), moved
    return writer, before, moved


def group_of(cluster: Cluster) -> dict:
    return cluster.groups()["/" + GROUP]


def assert_moved_group_replicated(cluster: Cluster, data: Path) -> None:
    """Unmount, then compare the group's data, wherever it lives, with its replica."""
    replica = cluster.secondary.store / group_of(cluster)["id"]
    cluster.umount()
    differences = tree_differences(data, replica)
    assert not differences, "the moved group differs from its replica:\n" + "\n".join(differences)


def test_a_group_moves_while_a_writer_runs_and_nothing_but_its_writes_crosses(proxied: Cluster) -> None:
    proxied.mount("--group", GROUP)
    m = proxied.mnt
    (m / GROUP / "disks").mkdir()
    write_random(m / GROUP / "disks" / "root.img", 8)
    os.symlink("disks/root.img", m / GROUP / "current")
    target = proxied.base / "disk2" / "vm1"
    target.parent.mkdir()
    writer, before, moved = move_while_writing(proxied, target)
    written = (writer.acked - before) * RECORD
    carried = proxied.proxy.bytes_to_secondary
    assert carried <= written * 1.1 + 64 * KiB, f"{carried} bytes crossed for {written} bytes written"
    assert writer.longest < 1.0, f"the writer waited {writer.longest:.3f}s for a write"
    status = group_of(proxied)
    assert (status["state"], status["data_dir"]) == ("InSync", str(target)), status
    assert list((proxied.primary_store / GROUP).iterdir()) == [], "the group's old place is not an empty stand-in"
    assert_ledger(m / GROUP / "journal", writer.acked)
    assert_ledger(target / "journal", writer.acked)
    assert os.readlink(m / GROUP / "current") == "disks/root.img"
    assert_moved_group_replicated(proxied, target)
    proxied.mount("--group", GROUP)  # a later mount serves the group from its new place
    assert_ledger(m / GROUP / "journal", writer.acked)
    (m / GROUP / "after-remount").write_bytes(b"new")
    assert (target / "after-remount").read_bytes() == b"new"
    assert group_of(proxied)["data_dir"] == str(target)
    assert_moved_group_replicated(proxied, target)


def test_a_group_moves_back_into_the_store(mounted_group: Cluster) -> None:
    m = mounted_group.mnt
    (m / GROUP / "f").write_bytes(b"kept")
    away = mounted_group.base / "away"
    for to in (away, mounted_group.primary_store / GROUP):
        done = fsrep_move(str(m), "--group", GROUP, "--to", str(to))
        assert done.returncode == 0, done.stderr
        assert f"to {to} in" in done.stdout, done.stdout
        assert (m / GROUP / "f").read_bytes() == b"kept"
    assert group_of(mounted_group)["data_dir"] == ""
    assert not away.exists()
    assert (mounted_group.primary_store / GROUP / "f").read_bytes() == b"kept"
    assert_moved_group_replicated(mounted_group, mounted_group.primary_store / GROUP)


@pytest.fixture
def mounted_group(cluster: Cluster) -> Cluster:
    cluster.mount("--group", GROUP)
    return cluster


def test_a_move_refuses_an_unsuitable_destination_in_one_line(mounted_group: Cluster) -> None:
    m, base = mounted_group.mnt, mounted_group.base
    (m / GROUP / "f").write_bytes(b"stays")
    (base / "full").mkdir()
    (base / "full" / "x").write_bytes(b"")
    other_fs = base / "tmpfs"
    other_fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other_fs)], check=True)
    try:
        cases = [
            (GROUP, base / "full", "is not empty"),
            (GROUP, other_fs / "vm1", "no space for the group's data"),
            (GROUP, m / "elsewhere", "is inside the mount"),
            (GROUP, mounted_group.primary_store / "inside", "is inside the data of group / (the store)"),
            (GROUP, base / "no" / "such" / "parent", "make its parent directory first"),
            ("/", base / "d", "the default group's data is the store itself"),
            ("nosuch", base / "d", "no consistency group 'nosuch'"),
        ]
        for group, to, expected in cases:
            done = fsrep_move(str(m), "--group", group, "--to", str(to))
            assert done.returncode == 1, (to, done.stdout)
            assert expected in done.stderr, (to, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        relative = fsrep_move(str(m), "--group", GROUP, "--to", "relative/dir")
        assert "give an absolute path" in relative.stderr
    finally:
        subprocess.run(["umount", str(other_fs)], check=True)
    assert (m / GROUP / "f").read_bytes() == b"stays"
    assert group_of(mounted_group)["data_dir"] == ""


def test_a_moved_group_cannot_be_retired_while_it_lives_elsewhere(mounted_group: Cluster) -> None:
    done = fsrep_move(str(mounted_group.mnt), "--group", GROUP, "--to", str(mounted_group.base / "away"))
    assert done.returncode == 0, done.stderr
    mounted_group.umount()
    refused = mounted_group.mount("--retire", GROUP, check=False)
    assert refused.returncode != 0
    assert "fsrep-move --to" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_a_move_cut_short_by_a_crash_is_finished_or_forgotten(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "vms" / "vm1").mkdir(parents=True)
    target = tmp_path / "disk2"
    ino = os.lstat(store / "vms" / "vm1").st_ino
    record = GroupRecord(id="g", path="vms/vm1", policy="sync", secondary="127.0.0.1:9", moving_to=str(target),
                         moving_ino=ino)
    assert settle_interrupted(store, record)  # crashed before the rename
    assert (record.store, record.moving_to) == ("", "")
    os.rename(store / "vms" / "vm1", target)  # crashed after it
    record.moving_to, record.moving_ino = str(target), ino
    assert settle_interrupted(store, record)
    assert (record.store, record.moving_to, record.moving_ino) == (str(target), "", 0)
    assert not settle_interrupted(store, record), "a settled record changed again"
