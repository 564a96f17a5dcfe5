"""Failover and failback on real mounts (fsrep/_failover.py, the verdict's
row for an old primary, the fencing of a promoted replica): the primary
killed while a client appends fsync'd records, its replica promoted and
mounted and written, the old primary demoted and resynced from the common
snapshot, then the same the other way round — the trees equal by digest at
each step, every acknowledged record there, and only what changed since the
snapshot sent."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import tracking
from fsrep._config import GroupStore
from fsrep._digest import tree_digest
from fsrep._registry import REPLICA_KIND, position_file
from tests.conftest import (
    LINK_CLOSED,
    RESYNC,
    SESSION_CLOSED,
    Cluster,
    Secondary,
    assert_same_tree,
    fsrep_resync,
    run_fsrep,
    wait_for,
    write_random,
)
from tests.proxy import FaultProxy

MiB = 1024 * 1024
REGION = 4096
NO_SCHEDULE = ("--snapshot-interval", "0")
KILLED = (r" WARNING \S+: group \S+: the primary daemon did not shut down cleanly", SESSION_CLOSED, LINK_CLOSED)
# The promoted side cannot reach the old primary's host until it is demoted and served.
UNREACHABLE = r" WARNING \S+: group \S+: link to \S+ lost" r"(?: at seq \d+ of generation \S+)?: cannot connect"
CUT_OFF = r" WARNING \S+: group \S+: ending the session from \S+ to promote the replica$"
FENCED = (r" WARNING \S+: group \S+: refusing \S+: group \S+ was promoted to primary",
          r" WARNING \S+: dropping connection with \S+: group \S+ was promoted to primary")
FENCED_PRIMARY = r" WARNING \S+: group \S+: link to \S+ lost" r"(?: at seq \d+ of generation \S+)?: \S+ closed the " \
                 r"session: group \S+ was promoted to primary"

# Appends numbered 64-byte records, each fsync'd before its number is printed: a printed number is acknowledged.
LEDGER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
i = 0
while True:
    try:
        os.write(fd, b"%063d\\n" % i)
        os.fsync(fd)
    except OSError:
        break
    print(i, flush=True)
    i += 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mount(store: Path, mnt: Path, secondary: str, key: Path) -> None:
    mnt.mkdir(exist_ok=True)
    run_fsrep("mount", str(store), str(mnt), "--secondary", secondary, "--key-file", str(key), *NO_SCHEDULE)


def status(mnt: Path) -> dict:
    (group,) = json.loads(run_fsrep("status", str(mnt), "--json").stdout)["groups"]
    return group


def wait_in_sync(mnt: Path) -> dict:
    """Wait until the group is InSync (the promoted side reconnects within its backoff, at most 30 s)."""
    return wait_for(lambda: (group := status(mnt))["state"] == "InSync" and group, f"{mnt} InSync", timeout=90,
                    step=0.2)


def acknowledged(ledger: subprocess.Popen) -> int:
    out, _ = ledger.communicate(timeout=30)
    numbers = [int(line) for line in out.split()]
    assert numbers, "the ledger writer acknowledged nothing"
    return numbers[-1]


def assert_ledger(path: Path, last: int) -> None:
    records = path.read_bytes().split(b"\n")
    assert [int(r) for r in records[:last + 1]] == list(range(last + 1)), f"{path} lost acknowledged records"


def changed_bytes(*writes: tuple[int, int]) -> int:
    """What (offset, length) writes of distinct files cover, in whole regions."""
    return sum((offset + length + REGION - 1) // REGION * REGION - offset // REGION * REGION
               for offset, length in writes)


@pytest.mark.expect_log(*KILLED, UNREACHABLE, *FENCED, FENCED_PRIMARY)
def test_failover_then_failback_sends_only_what_changed_since_the_snapshot(cluster: Cluster) -> None:
    key, base = cluster.key, cluster.base
    a_store, a_mnt, b_sec = cluster.primary_store, cluster.mnt, cluster.secondary
    a_sec = Secondary(base / "a-secondary", key, port=free_port())
    a_sec.store.mkdir()
    b_mnt = base / "mnt-b"
    try:
        # Host A serves, replicating to B; a snapshot, then more changes and a client appending fsync'd records.
        mount(a_store, a_mnt, b_sec.address, key)
        write_random(a_mnt / "big", 32)
        run_fsrep("umount", str(a_mnt))  # a clean restart: the activity log starts empty
        mount(a_store, a_mnt, b_sec.address, key)
        run_fsrep("snapshot", str(a_mnt), "create", "--name", "s1")
        with open(a_mnt / "big", "r+b") as f:
            f.seek(3 * MiB)
            f.write(os.urandom(MiB))
        ledger = subprocess.Popen([sys.executable, "-c", LEDGER, str(a_mnt / "ledger")], stdout=subprocess.PIPE,
                                  text=True)
        wait_for(lambda: (a_mnt / "ledger").exists() and (a_mnt / "ledger").stat().st_size > 64 * 200,
                 "200 ledger records")
        cluster.kill_primary()  # host A is lost while the client writes
        last = acknowledged(ledger)
        gid = b_sec.replica_root().name
        b_store = b_sec.store / gid

        # Failover: B's replica is promoted (its daemon running) and served, and written.
        promoted = run_fsrep("promote", str(b_store)).stdout
        assert "promoted at generation" in promoted, promoted
        assert "start at snapshot s1" in promoted, promoted
        assert_ledger(b_store / "ledger", last)  # every acknowledged record made it before the failover
        mount(b_store, b_mnt, a_sec.address, key)
        assert "promoted at generation" in status(b_mnt)["stale_reason"]
        with open(b_mnt / "big", "r+b") as f:
            f.seek(17 * MiB + 100)
            f.write(os.urandom(2 * MiB))
            os.fsync(f.fileno())
        (b_mnt / "new-on-b").write_bytes(b"written after the failover\n")

        # The old primary comes back: its store becomes B's replica, resynced from s1 — not from scratch.
        run_fsrep("umount", str(a_mnt))  # the mount the killed daemon left
        demoted = run_fsrep("demote", str(a_store), "--into", str(a_sec.store)).stdout
        assert "snapshots kept: s1" in demoted, demoted
        assert not a_store.exists()
        assert (a_sec.store / gid / "big").is_file()
        assert not (a_sec.store / gid / ".fsrep").exists()
        a_sec.start()
        group = wait_in_sync(b_mnt)
        run = group["resync"]
        assert run["mode"] == "snapshot", run
        assert run["snapshot"] == "s1", run
        # Changed since s1: on B, what it wrote; on A, what its activity log held at the crash — the first
        # extent of big and of the ledger (a crash leaves extents, not regions) — and never the rest of big.
        ledger_size = (b_store / "ledger").stat().st_size
        since = changed_bytes((0, tracking.EXTENT_SIZE), (17 * MiB + 100, 2 * MiB), (0, ledger_size))
        assert 2 * MiB <= run["bytes_copied"] <= since + 256 * 1024, (run["bytes_copied"], since)
        run_fsrep("snapshot", str(b_mnt), "create", "--name", "s2")  # a newer common point
        with open(b_mnt / "big", "r+b") as f:
            f.seek(25 * MiB)
            f.write(os.urandom(MiB))
        run_fsrep("umount", str(b_mnt))
        assert_same_tree(b_store, a_sec.store / gid)
        assert_ledger(a_sec.store / gid / "ledger", last)

        # Failback: A's replica promoted, B's store demoted in place, and the same again the other way.
        run_fsrep("promote", str(a_sec.store / gid))
        mount(a_sec.store / gid, a_mnt, b_sec.address, key)
        (a_mnt / "after-failback").write_bytes(b"A serves again\n")
        run_fsrep("demote", str(b_store), "--into", str(b_sec.store))
        group = wait_in_sync(a_mnt)
        run = group["resync"]
        assert run["mode"] == "snapshot", run
        assert run["snapshot"] == "s2", run
        assert MiB <= run["bytes_copied"] <= MiB + 64 * 1024, run  # what B wrote since s2, and A's new file
        run_fsrep("umount", str(a_mnt))
        assert_same_tree(a_sec.store / gid, b_store)
        assert (b_store / "new-on-b").read_bytes() == b"written after the failover\n"
        assert_ledger(b_store / "ledger", last)
    finally:
        for mnt in (b_mnt, a_mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        a_sec.stop(signal.SIGKILL)


@pytest.mark.expect_log(*FENCED, FENCED_PRIMARY)
def test_a_promoted_replica_refuses_the_old_primary(cluster: Cluster) -> None:
    cluster.mount(*NO_SCHEDULE)
    (cluster.mnt / "f").write_bytes(b"before\n")
    cluster.umount()
    cluster.secondary.stop()
    replica = cluster.secondary.replica_root()
    promoted = run_fsrep("promote", str(replica)).stdout  # the daemon stopped: done under the store's lock
    assert "promoted at generation" in promoted
    record = tracking.load_state(position_file(cluster.secondary.store, replica.name), REPLICA_KIND)
    assert record["promoted"]["from"] == record["generations"][-1]
    (promoted_record,) = GroupStore(str(replica)).load_all()
    assert promoted_record.promoted_from == record["generations"][-1]
    assert promoted_record.generations[-1] == record["promoted"]["generation"]
    cluster.secondary.start()
    cluster.mount(*NO_SCHEDULE)  # the old primary: refused, it keeps serving its clients locally
    group = wait_for(lambda: (g := cluster.status())["last_error"] and g, "the refusal")
    assert "was promoted to primary" in group["last_error"], group
    assert "fsrep demote" in group["last_error"], group
    assert group["state"] != "InSync"
    (cluster.mnt / "f").write_bytes(b"after\n")
    assert (replica / "f").read_bytes() == b"before\n"  # nothing of the old primary reached the promoted replica
    again = run_fsrep("promote", str(replica), check=False)
    assert again.returncode == 1, again.stderr
    assert "promoted already" in again.stderr, again.stderr


@pytest.mark.expect_log(CUT_OFF, SESSION_CLOSED, LINK_CLOSED, *FENCED, FENCED_PRIMARY)
def test_promote_refuses_a_live_primary_unless_forced(mounted: Cluster) -> None:
    replica = mounted.secondary.replica_root()
    refused = run_fsrep("promote", str(replica), check=False)
    assert refused.returncode == 1
    assert "connected and alive" in refused.stderr
    assert "--force" in refused.stderr
    assert not (replica / ".fsrep").exists()
    (mounted.mnt / "still").write_bytes(b"replicated\n")
    assert (replica / "still").read_bytes() == b"replicated\n"
    forced = run_fsrep("promote", str(replica), "--force").stdout
    assert "cut off the old primary's session" in forced, forced
    wait_for(lambda: mounted.status()["state"] != "InSync", "the old primary cut off")
    (mounted.mnt / "later").write_bytes(b"local only\n")
    assert not (replica / "later").exists()


def test_promote_and_demote_refuse_what_they_cannot_do(cluster: Cluster, tmp_path: Path) -> None:
    cluster.mount(*NO_SCHEDULE)
    (cluster.mnt / "f").write_bytes(b"x")
    other = tmp_path / "other-secondary"
    other.mkdir()
    mounted = run_fsrep("demote", str(cluster.primary_store), "--into", str(other), check=False)
    assert mounted.returncode == 1, mounted.stderr
    assert "in use by another fsrep daemon" in mounted.stderr, mounted.stderr
    cluster.umount()
    not_replica = run_fsrep("promote", str(cluster.secondary.store), check=False)
    assert not_replica.returncode == 1
    assert "not a replica directory" in not_replica.stderr
    gid = cluster.secondary.replica_root().name
    held = run_fsrep("demote", str(cluster.primary_store), "--into", str(cluster.secondary.store), check=False)
    assert held.returncode == 1, held.stderr
    assert "exists already" in held.stderr, held.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    none = run_fsrep("demote", str(plain), "--into", str(other), check=False)
    assert none.returncode == 1, none.stderr
    assert "no consistency groups" in none.stderr, none.stderr
    assert "Traceback" not in mounted.stderr + not_replica.stderr + held.stderr + none.stderr
    assert (cluster.primary_store / "f").exists()
    assert not (other / gid).exists()



ROLLED_BACK = r" WARNING \S+: group \S+: rolled back to seq \d+, where a resync that did not complete began"


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED, ROLLED_BACK, r" WARNING \S+: group \S+: link to \S+ lost")
def test_a_replica_promoted_in_the_middle_of_a_resync_is_as_the_primary_was_when_it_began(cluster: Cluster) -> None:
    cluster.mount(*NO_SCHEDULE, "--resync-rate-limit", "2M")
    write_random(cluster.mnt / "big", 24)
    for n in range(20):
        (cluster.mnt / f"small-{n}").write_bytes(os.urandom(5000))
    replica = cluster.secondary.replica_root()
    wait_for(lambda: cluster.status()["ops_in_flight"] == 0, "everything acknowledged")
    cluster.secondary.stop()
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the cut noticed")
    before = tree_digest(replica)  # the replica when the resync begins: the primary as it was at the cut
    with open(cluster.mnt / "big", "r+b") as f:  # a large change while cut off
        for n in range(0, 24, 2):
            f.seek(n * MiB)
            f.write(os.urandom(MiB))
    for n in range(0, 20, 3):
        (cluster.mnt / f"small-{n}").unlink()
    (cluster.mnt / "small-1").rename(cluster.mnt / "moved")
    (cluster.mnt / "new").write_bytes(b"made while cut off")
    cluster.secondary.start()
    wait_for(lambda: (run := cluster.status()["resync"]) and run["running"] and run["bytes_copied"] >= 2 * MiB,
             "the resync under way")
    cluster.kill_primary()  # lost in the middle of it
    promoted = wait_for(lambda: (done := run_fsrep("promote", str(replica), check=False)).returncode == 0 and done,
                        "the dead primary's session to end")
    assert "rolled back to seq" in promoted.stdout, promoted.stdout
    assert tree_digest(replica) == before  # never half-synced
    assert not (replica / "new").exists()


UNDO_FULL = (r" ERROR \S+: group \S+: cannot apply seq \d+ \(\w+\) at seq \d+ of generation \S+: \[Errno 122\] the "
             r"undo log is full",
             r" WARNING \S+: group \S+: link to \S+ lost" r"(?: at seq \d+ of generation \S+)?: resync paused: the "
             r"secondary cannot keep more of what it overwrites")


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED, *UNDO_FULL)
def test_a_resync_that_outgrows_the_undo_log_waits_and_says_so(cluster: Cluster) -> None:
    cluster.secondary.stop()
    cluster.secondary.args = ("--undo-limit", "1M")
    cluster.secondary.start()
    cluster.mount(*NO_SCHEDULE)
    write_random(cluster.mnt / "big", 8)
    wait_for(lambda: cluster.status()["ops_in_flight"] == 0, "everything acknowledged")
    cluster.secondary.stop()
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the cut noticed")
    with open(cluster.mnt / "big", "r+b") as f:
        f.write(os.urandom(4 * MiB))  # more old data than the replica may keep
    cluster.secondary.start()
    group = wait_for(lambda: "undo log is full" in (g := cluster.status())["last_error"] and g, "the pause")
    assert "--undo-limit" in group["last_error"], group["last_error"]
    assert group["state"] != "InSync"
    cluster.secondary.stop()
    cluster.secondary.args = ("--undo-limit", "64M")
    cluster.secondary.start()
    done = fsrep_resync(str(cluster.mnt))  # the link is tried at once
    assert done.returncode == 0, done.stderr
    assert cluster.status()["state"] == "InSync"
    undo = cluster.secondary.store / ".fsrep" / "undo" / cluster.secondary.replica_root().name
    wait_for(lambda: not undo.exists(), "the undo log released once the resync's end is durable")
    cluster.assert_replicated()


SPLIT = (r" WARNING \S+: group \S+: OutOfSync -> SplitBrain",
         r" WARNING \S+: group \S+: the replica's side of a split brain is given up",
         r" WARNING \S+: group \S+: split brain resolved by giving up the (?:secondary|primary)'s side")


class _SplitBrain:
    """A and B both written since snapshot s1: A (the old primary) went on
    serving alone, cut off, while B (its replica) was promoted, mounted
    and written; then A was demoted into a secondary store of its host
    and B connected to it. B sees SplitBrain."""

    def __init__(self, cluster: Cluster, *, proxied: bool = False) -> None:
        self.cluster = cluster
        self.a_sec = Secondary(cluster.base / "a-secondary", cluster.key, port=free_port())
        self.a_sec.store.mkdir()
        self.b_mnt = cluster.base / "mnt-b"
        self.proxy = FaultProxy(self.a_sec.address) if proxied else None  # between B and A's secondary

    def __enter__(self) -> _SplitBrain:
        try:
            self._make()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _make(self) -> None:
        cluster, key = self.cluster, self.cluster.key
        mount(cluster.primary_store, cluster.mnt, cluster.secondary.address, key)
        m = cluster.mnt
        write_random(m / "big", 4)
        (m / "gone").write_bytes(b"removed on A")
        run_fsrep("snapshot", str(m), "create", "--name", "s1")
        self.gid = cluster.secondary.replica_root().name
        cluster.secondary.stop()  # cut off: the old primary goes on serving its clients alone
        wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the cut noticed")
        write_random(m / "a-only", 1)
        os.setxattr(m / "a-only", "user.side", b"A")
        with open(m / "big", "r+b") as f:
            f.seek(2 * MiB)
            f.write(b"A's bytes" * 1000)
        os.chmod(m / "big", 0o600)
        (m / "a-dir" / "deeper").mkdir(parents=True)
        (m / "a-dir" / "deeper" / "x").write_bytes(b"x" * 5000)
        os.symlink("deeper/x", m / "a-dir" / "link")
        (m / "gone").unlink()
        self.a_only, self.a_big = (cluster.mnt / "a-only").read_bytes(), (cluster.mnt / "big").read_bytes()
        run_fsrep("umount", str(cluster.mnt))
        self.b_store = cluster.secondary.store / self.gid
        run_fsrep("promote", str(self.b_store))  # meanwhile the replica was promoted
        run_fsrep("demote", str(cluster.primary_store), "--into", str(self.a_sec.store))
        self.a_replica = self.a_sec.store / self.gid
        self.a_sec.start()
        mount(self.b_store, self.b_mnt, self.a_sec.address if self.proxy is None else self.proxy.address, key)
        self.b_only = os.urandom(8192)
        (self.b_mnt / "b-only").write_bytes(self.b_only)
        with open(self.b_mnt / "big", "r+b") as f:
            f.seek(3 * MiB)
            f.write(b"B's bytes" * 1000)
        (self.b_mnt / "b-dir").mkdir()
        (self.b_mnt / "b-dir" / "y").write_bytes(b"y" * 100)
        self.b_big = (self.b_mnt / "big").read_bytes()

    def __exit__(self, *exc: object) -> None:
        for mnt in (self.b_mnt, self.cluster.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        self.a_sec.stop(signal.SIGKILL)
        if self.proxy is not None:
            self.proxy.close()

    def kept(self, store: Path, output: str) -> Path:
        """The one copy of a side given up, under *store*; named in *output*."""
        (kept,) = (store / ".fsrep" / "divergent" / self.gid).iterdir()
        assert str(kept) in output, output
        return kept


@pytest.mark.expect_log(LINK_CLOSED, UNREACHABLE, *SPLIT)
def test_an_old_primary_that_wrote_on_alone_is_split_brain_and_status_says_what_diverged(cluster: Cluster) -> None:
    with _SplitBrain(cluster) as split:
        b_mnt = split.b_mnt
        group = wait_for(lambda: (g := status(b_mnt))["divergence"] and g["divergence"]["secondary_files"] >= 0
                         and g, "split brain measured", timeout=90)
        assert group["state"] == "SplitBrain"
        d = group["divergence"]
        assert d["snapshot"] == "s1"
        assert d["secondary_bytes"] >= MiB  # a-only, written on the old primary alone
        assert d["primary_bytes"] >= 8192  # b-only, on the promoted side
        text = run_fsrep("status", str(b_mnt)).stdout
        assert "split brain: since snapshot s1" in text, text
        assert (split.a_replica / "a-only").exists()  # nothing of either side was given up
        done = fsrep_resync(str(b_mnt), "--discard", "secondary")  # the operator gives up the old primary's side
        assert done.returncode == 0, done.stderr
        assert "the secondary's side of the split brain is kept on the secondary in" in done.stdout, done.stdout
        run_fsrep("umount", str(b_mnt))
        assert_same_tree(split.b_store, split.a_replica)
        assert not (split.a_replica / "a-only").exists()
        assert not (split.a_replica / "a-dir").exists()
        assert (split.a_replica / "gone").read_bytes() == b"removed on A"
        assert (split.a_replica / "big").read_bytes() == split.b_big
        kept = split.kept(split.a_sec.store, done.stdout)
        assert (kept / "a-only").read_bytes() == split.a_only  # a plain file at the same path
        copy = (kept / "big").read_bytes()
        assert len(copy) == len(split.a_big)
        assert copy[2 * MiB:2 * MiB + 9000] == split.a_big[2 * MiB:2 * MiB + 9000]  # the regions A changed
        assert (kept / "a-dir" / "deeper" / "x").read_bytes() == b"x" * 5000
        assert not (kept / "b-only").exists()


@pytest.mark.expect_log(LINK_CLOSED, UNREACHABLE, *SPLIT)
def test_giving_up_the_primary_s_side_takes_the_secondary_s_and_keeps_a_copy(cluster: Cluster) -> None:
    with _SplitBrain(cluster) as split:
        b_mnt = split.b_mnt
        wait_for(lambda: status(b_mnt)["state"] == "SplitBrain", "split brain", timeout=90)
        with open(b_mnt / "big", "rb") as held:  # open across the pull: reads what the mount holds after it
            done = fsrep_resync(str(b_mnt), "--discard", "primary")  # the promoted side's changes are given up
            assert done.returncode == 0, done.stderr
            assert "the primary's side of the split brain is kept on the primary in" in done.stdout, done.stdout
            assert status(b_mnt)["state"] == "InSync"
            held.seek(3 * MiB)
            assert held.read(9000) == split.a_big[3 * MiB:3 * MiB + 9000]
        assert (b_mnt / "a-only").read_bytes() == split.a_only  # through the mount: no stale cache
        assert (b_mnt / "big").read_bytes() == split.a_big
        assert not (b_mnt / "b-only").exists()
        assert not (b_mnt / "b-dir").exists()
        assert not (b_mnt / "gone").exists()
        assert os.getxattr(b_mnt / "a-only", "user.side") == b"A"
        assert stat.S_IMODE(os.stat(b_mnt / "big").st_mode) == 0o600
        assert (b_mnt / "a-dir" / "deeper" / "x").read_bytes() == b"x" * 5000
        assert os.readlink(b_mnt / "a-dir" / "link") == "deeper/x"
        (b_mnt / "after").write_bytes(b"replicated again")
        run_fsrep("umount", str(b_mnt))
        assert_same_tree(split.b_store, split.a_replica)
        assert (split.a_replica / "after").read_bytes() == b"replicated again"
        kept = split.kept(split.b_store, done.stdout)
        assert (kept / "b-only").read_bytes() == split.b_only
        copy = (kept / "big").read_bytes()
        assert copy[3 * MiB:3 * MiB + 9000] == split.b_big[3 * MiB:3 * MiB + 9000]  # the regions B changed
        assert (kept / "b-dir" / "y").read_bytes() == b"y" * 100
        assert not (kept / "a-only").exists()


RESYNC_FAILED = r" WARNING \S+: group \S+: resync failed: resync interrupted: "


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED, UNREACHABLE, RESYNC_FAILED, *SPLIT)
def test_a_pull_cut_off_by_the_link_goes_on_when_it_is_back_and_keeps_one_copy(cluster: Cluster) -> None:
    with _SplitBrain(cluster, proxied=True) as split:
        b_mnt, proxy = split.b_mnt, split.proxy
        assert proxy is not None
        wait_for(lambda: status(b_mnt)["state"] == "SplitBrain", "split brain", timeout=90)
        proxy.delay(0.1)  # each of the pull's questions waits: it is cut off in the middle
        log = split.b_store / ".fsrep" / "fsrep.log"
        with subprocess.Popen([*RESYNC, str(b_mnt), "--discard", "primary"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as resync:
            wait_for(lambda: "kept on the primary in" in log.read_text(), "this side kept", timeout=60)
            proxy.cut()
            out, err = resync.communicate(timeout=60)
        assert resync.returncode == 1, (out, err)
        assert "resumes by itself" in err, err
        assert "took the secondary's side" not in log.read_text(), "the pull ended before the cut"
        proxy.restore()
        wait_in_sync(b_mnt)  # the run goes on with the next session: the rest is pulled, then sent back
        text = log.read_text()
        assert text.count("kept on the primary in") == 1, text  # the pull went on; this side was not copied again
        assert "took the secondary's side" in text
        assert (b_mnt / "a-only").read_bytes() == split.a_only
        assert not (b_mnt / "b-only").exists()
        run_fsrep("umount", str(b_mnt))
        assert_same_tree(split.b_store, split.a_replica)
        kept = split.kept(split.b_store, text)
        assert (kept / "b-only").read_bytes() == split.b_only
