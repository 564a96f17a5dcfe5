"""What happens when the secondary is wrong or gone: wrong key, strict and
sync policies, an unreachable secondary at mount time."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    ACKS_STOPPED,
    LINK_CLOSED,
    LINK_LOST,
    REFUSED_PEER,
    RESERVE_GIVEN_UP,
    SESSION_CLOSED,
    UNCLEAN_SHUTDOWN,
    Cluster,
    assert_same_tree,
    run_fsrep,
    wait_for,
)

WRONG_KEY = REFUSED_PEER + r"\S+ closed the session: secondary failed authentication \(wrong key\?\)\)?$"


@pytest.mark.expect_log(WRONG_KEY)
def test_wrong_key_is_refused_and_nothing_is_applied(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    run_fsrep("keygen", str(other))
    done = run_fsrep("mount", str(cluster.primary_store), str(cluster.mnt), "--secondary",
                     cluster.secondary.address, "--key-file", str(other), check=False)
    assert done.returncode != 0
    assert "refused authentication" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
    assert not os.path.ismount(cluster.mnt)
    assert [p.name for p in cluster.secondary.store.iterdir()] == [".fsrep"]
    log = (cluster.secondary.store / ".fsrep" / "serve.log").read_text()
    assert "failed authentication" in log


@pytest.mark.expect_log(LINK_CLOSED)
def test_strict_returns_eio_when_the_secondary_is_down(cluster: Cluster) -> None:
    cluster.mount(policy="strict")
    (cluster.mnt / "before").write_text("replicated")
    cluster.secondary.stop(signal.SIGKILL)
    wait_for(lambda: not cluster.status()["connected"], "the link loss to be noticed")
    with pytest.raises(OSError) as info:
        (cluster.mnt / "after").write_text("refused")
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError) as info:
        (cluster.mnt / "dir").mkdir()
    assert info.value.errno == errno.EIO
    assert (cluster.mnt / "before").read_text() == "replicated"
    status = cluster.status()
    assert status["state"] == "OutOfSync"
    assert status["policy"] == "strict"


@pytest.mark.expect_log(ACKS_STOPPED, SESSION_CLOSED)
def test_strict_write_in_flight_fails_when_acks_stop(cluster: Cluster) -> None:
    cluster.mount("--ack-timeout", "1", policy="strict")
    f = cluster.mnt / "f"
    f.write_text("ok")
    cluster.secondary.proc.send_signal(signal.SIGSTOP)  # alive but silent: only the ack timeout can tell
    try:
        with pytest.raises(OSError) as info:
            with open(f, "ab") as h:
                h.write(b"never acknowledged")
        assert info.value.errno == errno.EIO
        assert cluster.status()["state"] == "OutOfSync"
    finally:
        cluster.secondary.proc.send_signal(signal.SIGCONT)


@pytest.mark.expect_log(LINK_CLOSED)
def test_sync_keeps_serving_and_shows_out_of_sync(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "before").write_text("replicated")
    cluster.secondary.stop()
    for i in range(20):
        (cluster.mnt / f"after{i}").write_text("local only")
    status = cluster.wait_state("OutOfSync")
    assert status["connected"] is False
    assert "link lost" in status["stale_reason"]
    assert (cluster.mnt / "after19").read_text() == "local only"
    cluster.secondary.start()  # the same port: the primary reconnects with backoff
    cluster.wait_state("InSync")  # and resyncs the stale replica by itself
    (cluster.mnt / "after-resync").write_text("replicated again")
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED)
def test_writers_keep_going_across_a_link_cut_and_resync(cluster: Cluster) -> None:
    cluster.mount()
    data = {}
    for round_ in range(3):
        for i in range(30):
            name = f"r{round_}-{i}"
            data[name] = os.urandom(1000 + i)
            (cluster.mnt / name).write_bytes(data[name])
        if round_ == 0:
            cluster.secondary.stop(signal.SIGKILL)
        elif round_ == 1:
            cluster.secondary.start()
    cluster.wait_state("InSync")
    for name, content in data.items():
        assert (cluster.mnt / name).read_bytes() == content
    cluster.assert_replicated()


def test_sync_mounts_out_of_sync_when_the_secondary_is_unreachable(cluster: Cluster) -> None:
    cluster.secondary.stop()
    done = cluster.mount()
    assert "OutOfSync" in done.stdout
    (cluster.mnt / "f").write_text("local")
    status = cluster.status()
    assert status["state"] == "OutOfSync"
    assert status["connected"] is False


def test_strict_refuses_to_mount_without_the_secondary(cluster: Cluster) -> None:
    cluster.secondary.stop()
    done = cluster.mount(policy="strict", check=False)
    assert done.returncode != 0
    assert "cannot reach secondary" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(cluster.mnt)


KEEP_WRITING = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
for i in range(1_000_000):
    os.pwrite(fd, os.urandom(4096), (i * 7919 % 256) * 4096)  # within the first MiB of the file
"""


def _kill_primary(cluster: Cluster) -> None:
    cluster.kill_primary()
    subprocess.run(["fusermount3", "-u", "-z", str(cluster.mnt)], check=True)
    cluster.mounted = False


@pytest.mark.expect_log(UNCLEAN_SHUTDOWN, SESSION_CLOSED)
def test_kill_of_the_primary_during_writes_resyncs_only_the_active_extents(cluster: Cluster) -> None:
    cluster.mount()
    big = cluster.mnt / "big"
    with open(big, "wb") as f:
        for _ in range(48):
            f.write(os.urandom(1024 * 1024))
    cluster.umount()  # a clean restart: the activity log starts empty again
    cluster.mount()
    writer = subprocess.Popen([sys.executable, "-c", KEEP_WRITING, str(big)], stderr=subprocess.DEVNULL)
    try:
        start = cluster.status()["last_acked_seq"]
        wait_for(lambda: cluster.status()["last_acked_seq"] > start + 200, "writes under way")
        _kill_primary(cluster)
    finally:
        writer.kill()
        writer.wait()
    cluster.mount()
    status = cluster.status()
    assert status["state"] == "InSync"
    log = cluster.primary_log()
    assert "did not shut down cleanly" in log
    assert "quick resync complete" in log
    assert 0 < status["resync_bytes_sent"] <= 4 * 1024 * 1024, "more than the active extent crossed the link"
    cluster.assert_replicated()


def test_a_store_with_existing_data_gets_a_baseline(cluster: Cluster) -> None:
    store = cluster.primary_store
    (store / "dir" / "deep").mkdir(parents=True)
    (store / "dir" / "deep" / "file").write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    with open(store / "sparse", "wb") as f:
        f.seek(50 * 1024 * 1024)
        f.write(b"tail")
    os.link(store / "dir" / "deep" / "file", store / "hardlink")
    os.symlink("dir/deep/file", store / "symlink")
    os.mkfifo(store / "fifo")
    os.setxattr(store / "dir", "user.k", b"v")
    os.chown(store / "dir" / "deep", 1000, 1000)
    cluster.mount()  # serves at once; the baseline runs behind
    cluster.wait_state("InSync")
    (cluster.mnt / "after").write_text("replicated normally")
    cluster.assert_replicated()
    replica = cluster.secondary.replica_root()
    assert os.stat(replica / "sparse").st_blocks < 1024, "the sparse file was not kept sparse"


@pytest.mark.expect_log(LINK_CLOSED)
def test_resync_replaces_whatever_the_replica_held(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "kept").write_text("1")
    cluster.umount()
    replica = cluster.secondary.replica_root()
    (replica / "stray").write_text("not on the primary")
    (replica / "kept").write_text("changed behind fsrep's back")
    state = next((cluster.primary_store / ".fsrep" / "groups").glob("*.json"))
    state.write_text(state.read_text())  # untouched: only the primary's stale mark triggers a resync
    cluster.secondary.stop(signal.SIGKILL)
    cluster.secondary.start()
    cluster.mount()
    (cluster.mnt / "more").write_text("2")
    cluster.secondary.stop()
    (cluster.mnt / "while-down").write_text("3")
    cluster.secondary.start()
    cluster.umount()
    cluster.mount()  # serves at once; the resync runs behind
    cluster.wait_state("InSync")
    cluster.assert_replicated()


SMALL_FILES = """
import os, sys
root = sys.argv[1]
for d in range(1000):
    os.makedirs(os.path.join(root, f"d{d}"), exist_ok=True)
    for i in range(50):
        with open(os.path.join(root, f"d{d}", f"f{i}"), "wb") as f:
            f.write(os.urandom(100 + i * 37))
        os.chmod(os.path.join(root, f"d{d}", f"f{i}"), 0o640)
"""


@pytest.mark.expect_log(UNCLEAN_SHUTDOWN, SESSION_CLOSED)
def test_kill_of_the_primary_while_creating_small_files_ends_identical(cluster: Cluster) -> None:
    cluster.mount()
    writer = subprocess.Popen([sys.executable, "-c", SMALL_FILES, str(cluster.mnt)], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: cluster.status()["last_acked_seq"] > 600, "files being created")
        _kill_primary(cluster)
    finally:
        writer.kill()
        writer.wait()
    cluster.mount()  # serves at once; the resync runs behind
    cluster.wait_state("InSync")
    log = cluster.primary_log()
    assert "active extents from the activity log are dirty" in log
    assert "quick resync complete" in log
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, UNCLEAN_SHUTDOWN, SESSION_CLOSED)
def test_kill_of_both_daemons_during_a_resync_loses_nothing(cluster: Cluster) -> None:
    cluster.mount("--resync-rate-limit", "2M")
    big = cluster.mnt / "big"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    (cluster.mnt / "dir").mkdir()
    cluster.secondary.stop()
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    for i in range(50):
        (cluster.mnt / "dir" / f"new{i}").write_bytes(os.urandom(5000))
    cluster.secondary.start()
    wait_for(lambda: (s := cluster.status())["state"] == "Resyncing" and s["resync"]["bytes_copied"] > 2 ** 20,
             "the resync to be half-way")
    _kill_primary(cluster)  # regions it copied were cleaned in memory; their frames may not be durable yet
    cluster.secondary.stop(signal.SIGKILL)  # and the secondary loses what it had not checkpointed
    cluster.secondary.start()
    cluster.mount()
    cluster.wait_state("InSync")
    cluster.assert_replicated()


LOCAL_WRITE_FAILED = (LINK_LOST + r"a local write failed after it was sent \(\[Errno 28\] No space left on device\); "
                      r"the resync repairs the replica$")
OWN_STATE_ON_A_FULL_DISK = r" ERROR \S+: group \S+: .*\[Errno 28\] No space left on device"  # the same disk


@pytest.mark.expect_log(LOCAL_WRITE_FAILED, RESERVE_GIVEN_UP, OWN_STATE_ON_A_FULL_DISK, SESSION_CLOSED)
def test_a_large_write_that_fails_here_after_it_was_sent_is_repaired_on_the_replica(cluster: Cluster) -> None:
    """A large write goes to the secondary before the local disk: when the
    local disk is full, the replica has data the primary lacks; the link is
    dropped and the resync copies the primary's version back over it."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "fsrep-test-full", str(cluster.primary_store)],
                   check=True)
    try:
        cluster.mount()
        (cluster.mnt / "small").write_bytes(os.urandom(1024 * 1024))
        data = os.urandom(4 * 1024 * 1024)
        with pytest.raises(OSError) as caught:
            with open(cluster.mnt / "big", "wb") as f:
                f.write(data)
        assert caught.value.errno == errno.ENOSPC
        wait_for(lambda: "a local write failed after it was sent" in cluster.primary_log(), "the link dropped")
        (cluster.mnt / "small").unlink()  # room again, so the resync can finish
        cluster.wait_state("InSync", timeout=60)
        cluster.umount()
        assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())
    finally:
        if cluster.mounted:
            cluster.umount()
        cluster.read_complaints()  # the primary's log goes with the tmpfs
        subprocess.run(["umount", str(cluster.primary_store)], check=False)
