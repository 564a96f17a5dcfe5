"""``fsrep-move --to-primary HOST:PORT``: a group moves from one running
primary to another (mounted with ``--accept-moves``) while a writer runs.
The writer's acknowledged records are all on the new primary, the new
primary and the secondary hold the same tree (by digest), the old mount
serves the subtree read-only, nothing but the writes crosses to the
secondary (counted at a FaultProxy, no new baseline), and a refusal, an
abort or a lost link before the take leaves the group where it was."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fsrep._config import GroupRecord, GroupStore
from fsrep._digest import tree_differences
from tests.conftest import Cluster, run_fsrep, wait_for, write_random
from tests.fsrep.test_move import GROUP, MOVE, RECORD, Writer, assert_ledger, record
from tests.fsrep.test_move_across import group_tree
from tests.proxy import FaultProxy

KiB, MiB = 1024, 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Other:
    """A second primary: its own store and mount, the cluster's key and
    secondary, accepting moves on ``accept``."""

    cluster: Cluster
    store: Path = field(init=False)
    mnt: Path = field(init=False)
    accept: str = field(init=False)
    mounted: bool = False

    def __post_init__(self) -> None:
        self.store, self.mnt = self.cluster.base / "primary2", self.cluster.base / "mnt2"
        self.store.mkdir()
        self.mnt.mkdir()
        self.accept = f"127.0.0.1:{free_port()}"

    def mount(self, *extra: str) -> None:
        run_fsrep("mount", str(self.store), str(self.mnt), "--secondary", self.cluster.secondary_address,
                  "--key-file", str(self.cluster.key), "--accept-moves", self.accept, *extra)
        self.mounted = True

    def umount(self) -> None:
        run_fsrep("umount", str(self.mnt))
        self.mounted = False

    def kill(self) -> None:
        """``kill -9`` the daemon; its dead mount goes."""
        pid = int((self.store / ".fsrep" / "lock").read_text().split()[2])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the other primary to die")
        subprocess.run(["umount", "-l", str(self.mnt)], check=True)
        self.mounted = False

    def groups(self) -> dict[str, dict]:
        groups = json.loads(run_fsrep("status", str(self.mnt), "--json").stdout)["groups"]
        return {group["path"]: group for group in groups}


@pytest.fixture
def other(proxied: Cluster) -> Iterator[Other]:
    second = Other(proxied)
    try:
        yield second
    finally:
        if second.mounted:
            with contextlib.suppress(AssertionError, subprocess.SubprocessError):
                second.umount()


def fsrep_move(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOVE, *args], capture_output=True, text=True, timeout=timeout)


def _group_record(store: Path, gid: str) -> GroupRecord:
    return next(record for record in GroupStore(str(store)).load_all() if record.id == gid)


@pytest.mark.expect_log(r"did not shut down cleanly", r"session with .* ended", r"link to .* lost", r"reconnect failed")
def test_a_group_moves_to_another_primary_while_a_writer_runs(proxied: Cluster, other: Other) -> None:
    proxied.mount("--group", GROUP)
    m = proxied.mnt
    group_tree(m)
    other.mount()
    (other.mnt / "vms").mkdir()
    gid = proxied.groups()["/" + GROUP]["id"]
    writer = Writer(m / GROUP / "journal")
    writer.read_only_ends = True
    writer.start()
    try:
        wait_for(lambda: writer.acked >= 20, "the writer under way")
        proxied.proxy.reset_counters()
        before = writer.acked
        done = fsrep_move(str(m), "--group", "/" + GROUP, "--to-primary", other.accept, "--json")
        assert done.returncode == 0, done.stderr
        moved = json.loads(done.stdout)
        wait_for(writer.refused.is_set, "the old mount to refuse the writer (EROFS)")
    finally:
        writer.stop()
    acked = writer.acked
    assert moved["destination"] == other.accept, moved
    assert moved["copied_bytes"] >= 24 * MiB, moved
    assert moved["pause_seconds"] < 1.0, moved
    # The new primary has every acknowledged record, and goes on with it.
    assert_ledger(other.mnt / GROUP / "journal", acked)
    fd = os.open(other.mnt / GROUP / "journal", os.O_WRONLY)
    try:
        for n in range(acked, acked + 50):  # after the last acknowledged one (one more may be there, unacknowledged)
            os.pwrite(fd, record(n), n * RECORD)
            os.fsync(fd)
    finally:
        os.close(fd)
    assert os.readlink(other.mnt / GROUP / "current") == "disks/root.img"
    assert os.getxattr(other.mnt / GROUP / "disks", "user.owner") == b"ops"
    there = wait_for(lambda: (g := other.groups()["/" + GROUP])["state"] == "InSync" and g, "InSync there")
    assert (there["id"], there["connected"]) == (gid, True), there
    assert there["snapshot"] is not None, there
    assert there["snapshot"]["name"].startswith("move-"), there
    # Only the writer's bytes crossed to the secondary: the move sent no baseline there.
    written = (acked - before + 50) * RECORD
    carried = proxied.proxy.bytes_to_secondary
    assert carried <= written * 1.1 + 64 * KiB, f"{carried} bytes crossed for {written} bytes written"
    # The old mount keeps a read-only copy and says where the group went.
    here = proxied.groups()["/" + GROUP]
    assert (here["moved_to"], here["move_unconfirmed"], here["connected"]) == (other.accept, False, False), here
    with pytest.raises(OSError) as refused:
        (m / GROUP / "new-file").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS
    with pytest.raises(OSError) as refused:
        os.open(m / GROUP / "disks" / "root.img", os.O_WRONLY)
    assert refused.value.errno == errno.EROFS
    assert (m / GROUP / "disks" / "root.img").read_bytes() == (other.mnt / GROUP / "disks" / "root.img").read_bytes()
    status = run_fsrep("status", str(m)).stdout
    assert f"moved to the primary at {other.accept}" in status, status
    # Killed, the new primary serves the group again by its record when mounted (no --group), in sync.
    other.kill()
    other.mount()
    assert_ledger(other.mnt / GROUP / "journal", acked + 50)
    wait_for(lambda: other.groups()["/" + GROUP]["state"] == "InSync", "InSync after a remount there")
    (other.mnt / GROUP / "after-remount").write_bytes(b"new")
    proxied.umount()  # the old one's later mounts keep the copy read-only
    proxied.mount("--group", GROUP)
    with pytest.raises(OSError) as refused:
        (m / GROUP / "another").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS
    assert proxied.groups()["/" + GROUP]["moved_to"] == other.accept
    other.umount()  # the new primary's tree is the secondary's replica, digest for digest
    differences = tree_differences(other.store / GROUP, proxied.secondary.store / gid)
    assert not differences, "the moved group differs from its replica:\n" + "\n".join(differences)
    assert _group_record(other.store, gid).arrived_from


REFUSED = r"the move to the primary at .* failed: "


@pytest.mark.expect_log(REFUSED, r"refusing the move from")
def test_a_primary_that_cannot_take_the_group_says_why_and_nothing_moves(proxied: Cluster, other: Other) -> None:
    proxied.mount("--group", GROUP)
    (proxied.mnt / GROUP / "data").write_bytes(b"stays")
    other.mount()
    (other.mnt / GROUP).mkdir(parents=True)  # the group's path is taken there
    done = fsrep_move(str(proxied.mnt), "--group", "/" + GROUP, "--to-primary", other.accept)
    assert done.returncode == 1
    assert f"/{GROUP} exists on the primary here" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    here = proxied.groups()["/" + GROUP]
    assert (here["state"], here["moved_to"]) == ("InSync", ""), here
    (proxied.mnt / GROUP / "more").write_bytes(b"writable")
    wait_for(lambda: not any((other.store / ".fsrep" / "incoming").glob("*-*-*-*-*")), "the copy there removed")
    assert list((other.mnt / GROUP).iterdir()) == []
    # Nobody listening there: one line, and nothing moves.
    other.umount()
    done = fsrep_move(str(proxied.mnt), "--group", "/" + GROUP, "--to-primary", other.accept)
    assert done.returncode == 1
    assert "cannot reach the primary at" in done.stderr, done.stderr
    assert proxied.groups()["/" + GROUP]["state"] == "InSync"
    # The default group stays: its data is the store.
    done = fsrep_move(str(proxied.mnt), "--group", "/", "--to-primary", other.accept)
    assert done.returncode == 1
    assert "the default group's data is the store itself" in done.stderr, done.stderr


@pytest.mark.expect_log(REFUSED, r"the move to the primary at .* aborted", r"link to .* lost",
                        r"session with .* ended")
@pytest.mark.parametrize("how", ["abort", "cut"])
def test_a_move_stopped_before_the_take_leaves_the_group_where_it_was(proxied: Cluster, other: Other,
                                                                      how: str) -> None:
    proxied.mount("--group", GROUP)
    write_random(proxied.mnt / GROUP / "big.img", 32)
    other.mount()
    (other.mnt / "vms").mkdir()
    with FaultProxy(other.accept) as gate:
        gate.delay(0.2)  # the copy takes seconds: time to stop it
        mover = subprocess.Popen([*MOVE, str(proxied.mnt), "--group", "/" + GROUP, "--to-primary", gate.address],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: gate.bytes_to_secondary > MiB, "the copy under way")  # the proxy's count: no lag
            gate.stall()  # the copy stops half way (its 32 MiB take seconds through the delay)
            if how == "abort":
                aborted = subprocess.run([*MOVE, str(proxied.mnt), "--group", "/" + GROUP, "--abort"],
                                         capture_output=True, text=True, timeout=60)
                assert aborted.returncode == 0, aborted.stderr
            else:
                gate.cut()
            _, err = mover.communicate(timeout=120)
            gate.restore()  # what the proxy held goes on to the other primary, then the connection's end
        finally:
            if mover.poll() is None:
                mover.kill()
                mover.wait()
    assert mover.returncode == 1, err
    assert ("aborted" if how == "abort" else f"the link to the primary at {gate.address} failed") in err, err
    here = proxied.groups()["/" + GROUP]
    assert (here["state"], here["moved_to"]) == ("InSync", ""), here
    assert not (other.mnt / GROUP).exists()
    wait_for(lambda: not any((other.store / ".fsrep" / "incoming").glob("*-*-*-*-*")), "the copy there removed")
    assert not (proxied.primary_store / ".fsrep" / "moving").exists() or \
        not any((proxied.primary_store / ".fsrep" / "moving").iterdir())
    (proxied.mnt / GROUP / "after").write_bytes(b"still here")
    proxied.umount()
    gid = _group_id(proxied.primary_store)
    differences = tree_differences(proxied.primary_store / GROUP, proxied.secondary.store / gid)
    assert not differences, "\n".join(differences)


def _group_id(store: Path) -> str:
    return next(record.id for record in GroupStore(str(store)).load_all() if record.path == GROUP)


@pytest.mark.expect_log(r"taken back from an unconfirmed move")
def test_a_move_whose_answer_never_came_leaves_the_group_read_only_until_taken_back(proxied: Cluster) -> None:
    """As after a crash between saving "moved to" and the other primary's
    answer: the group is read-only, status says the move is unconfirmed,
    and ``--abort`` takes it back (writable, replicating, in sync)."""
    proxied.mount("--group", GROUP)
    (proxied.mnt / GROUP / "data").write_bytes(b"before")
    proxied.umount()
    groups = GroupStore(str(proxied.primary_store))
    record = next(r for r in groups.load_all() if r.path == GROUP)
    record.moved_to, record.move_unconfirmed = "127.0.0.1:9", True
    groups.save(record)
    proxied.mount("--group", GROUP)
    here = proxied.groups()["/" + GROUP]
    assert (here["moved_to"], here["move_unconfirmed"], here["connected"]) == ("127.0.0.1:9", True, False), here
    assert "never confirmed it took the group" in run_fsrep("status", str(proxied.mnt)).stdout
    with pytest.raises(OSError) as refused:
        (proxied.mnt / GROUP / "data").write_bytes(b"after")
    assert refused.value.errno == errno.EROFS
    taken = subprocess.run([*MOVE, str(proxied.mnt), "--group", "/" + GROUP, "--abort"], capture_output=True,
                           text=True, timeout=60)
    assert taken.returncode == 0, taken.stderr
    assert "taken back" in taken.stdout, taken.stdout
    wait_for(lambda: proxied.groups()["/" + GROUP]["state"] == "InSync"
             and proxied.groups()["/" + GROUP]["connected"], "the group replicating again")
    (proxied.mnt / GROUP / "data").write_bytes(b"after")
    assert proxied.groups()["/" + GROUP]["moved_to"] == ""
    again = subprocess.run([*MOVE, str(proxied.mnt), "--group", "/" + GROUP, "--abort"], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 1
    assert "is not moving" in again.stderr, again.stderr
    proxied.umount()
    differences = tree_differences(proxied.primary_store / GROUP, proxied.secondary.store / record.id)
    assert not differences, "\n".join(differences)
