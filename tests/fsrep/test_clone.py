"""``fsrep clone``: a file copied inside a mount as one replicated
operation. Each side copies its own source, so no file data crosses the
link (counted at a FaultProxy); a clone made while the group is not InSync
is recorded, and the resync clones it on the secondary too and compares it
by digest. The trees end identical."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import FSREP, LINK_CLOSED, SESSION_CLOSED, Cluster, run_fsrep, wait_for, write_random
from tests.fsrep.test_groups import assert_group_replicated

KiB = 1024
MiB = 1024 * KiB
NOTICE_DEADLINE = 10.0
RECONNECT_DEADLINE = 30.0


def test_a_clone_replicates_as_one_operation_and_no_data_crosses(proxied: Cluster) -> None:
    proxied.mount()
    m = proxied.mnt
    (m / "vms").mkdir()
    src = m / "vms" / "base.img"
    write_random(src, 16)
    os.truncate(src, 24 * MiB)  # a hole at the end: the copy keeps it
    os.chmod(src, 0o640)
    before = proxied.status()
    proxied.proxy.reset_counters()
    done = run_fsrep("clone", str(src), str(m / "vms" / "vm7.img"))
    assert "replicated as one operation" in done.stdout, done.stdout
    assert f"({24 * MiB} bytes;" in done.stdout, done.stdout
    carried = proxied.proxy.bytes_to_secondary
    assert carried < 64 * KiB, f"{carried} bytes crossed the link for a clone of {24 * MiB}"
    status = proxied.status()
    assert status["state"] == "InSync", status
    assert status["bytes_cloned"] - before["bytes_cloned"] == 24 * MiB
    assert status["bytes_sent"] - before["bytes_sent"] == 0, "the group counted file data sent for a clone"
    assert before["bytes_sent"] >= 16 * MiB, "the source's writes were not counted as data sent"
    copy = m / "vms" / "vm7.img"
    assert copy.read_bytes() == src.read_bytes()
    assert os.stat(copy).st_mode == os.stat(src).st_mode
    replica_copy = proxied.secondary.replica_root() / "vms" / "vm7.img"
    assert os.stat(replica_copy).st_blocks * 512 <= 17 * MiB  # the hole stayed a hole there too
    with open(copy, "r+b") as f:  # the copy is a file of its own on both sides
        f.write(b"changed")
    assert src.read_bytes()[:7] != b"changed"
    proxied.assert_replicated()


def _rewrite(path: Path, offset: int, length: int, byte: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(byte * length)


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_a_clone_while_out_of_sync_is_replayed_as_a_clone_not_sent(proxied: Cluster) -> None:
    """The source partly dirty when cloned, the copy written after: the
    resync clones on the secondary too and sends only those regions."""
    proxied.mount()
    m = proxied.mnt
    write_random(m / "disk.img", 8)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    _rewrite(m / "disk.img", 1 * MiB, 64 * KiB, b"s")  # the replica's source lacks this: so does its clone
    done = run_fsrep("clone", str(m / "disk.img"), str(m / "copy.img"))
    assert "recorded for the resync" in done.stdout, done.stdout
    _rewrite(m / "copy.img", 5 * MiB, 4 * KiB, b"c")
    proxied.proxy.reset_counters()
    proxied.proxy.restore()
    status = proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    assert status["dirty_bytes"] == 0, status
    carried = proxied.proxy.bytes_to_secondary
    assert carried < 1 * MiB, f"{carried} bytes crossed the link: the 8 MiB clone travelled as data"
    run = status["resync"]
    assert (run["clones_replayed"], run["bytes_replayed_as_clones"]) == (1, 8 * MiB), run
    copy = (m / "copy.img").read_bytes()
    assert copy[1 * MiB:1 * MiB + 64 * KiB] == b"s" * 64 * KiB
    assert copy[5 * MiB:5 * MiB + 4 * KiB] == b"c" * 4 * KiB
    proxied.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
@pytest.mark.parametrize("after", ["source rewritten", "source removed", "another file renamed over the source",
                                   "copy renamed"])
def test_a_replayed_clone_ends_identical_whatever_the_source_became(proxied: Cluster, after: str) -> None:
    """The replica clones what it holds under the source's name, which may
    no longer be what was cloned; the digest comparison sends the rest."""
    proxied.mount()
    m = proxied.mnt
    (m / "vms").mkdir()
    write_random(m / "vms" / "base.img", 4)
    write_random(m / "other.img", 4)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    run_fsrep("clone", str(m / "vms" / "base.img"), str(m / "vms" / "vm1.img"))
    if after == "source rewritten":
        write_random(m / "vms" / "base.img", 4)
    elif after == "source removed":
        os.unlink(m / "vms" / "base.img")
    elif after == "another file renamed over the source":
        os.rename(m / "other.img", m / "vms" / "base.img")
    else:
        (m / "vms" / "new").mkdir()
        os.rename(m / "vms" / "vm1.img", m / "vms" / "new" / "vm1.img")
    proxied.proxy.restore()
    status = proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    assert status["dirty_bytes"] == 0, status
    proxied.assert_replicated()


def test_clone_refuses_what_it_cannot_do_in_one_line(mounted: Cluster,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    m = mounted.mnt
    (m / "f").write_bytes(b"data")
    (m / "taken").write_bytes(b"")
    (m / "d").mkdir()
    os.mkfifo(m / "fifo")
    outside = tmp_path_factory.mktemp("outside") / "plain"
    outside.write_bytes(b"x")
    for args, said in [((m / "f", m / "taken"), "exists"),
                       ((m / "fifo", m / "d2"), "neither a regular file nor a directory"),
                       ((m / "d", m / "d" / "inner"), "not cloned into itself"),
                       ((m / "missing", m / "x"), "No such file"),
                       ((outside, m / "x"), "not in an fsrep mount"),
                       ((m / "f", outside.parent / "x"), "not in the mount of")]:
        done = run_fsrep("clone", *map(str, args), check=False)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert said in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
    assert not (m / "d2").exists()
    assert not (m / "d" / "inner").exists()
    mounted.assert_replicated()


def test_a_directory_is_cloned_file_by_file_without_its_data_on_the_link(proxied: Cluster) -> None:
    proxied.mount()
    m = proxied.mnt
    base = m / "vms" / "base"
    (base / "disks").mkdir(parents=True)
    write_random(base / "disks" / "root.img", 8)
    write_random(base / "disks" / "data.img", 4)
    (base / "vm.conf").write_text("memory=4G\n")
    os.symlink("disks/root.img", base / "current")
    os.chmod(base / "disks", 0o750)
    proxied.proxy.reset_counters()
    done = run_fsrep("clone", str(base), str(m / "vms" / "vm8"))
    assert f"3 files ({12 * MiB + 10} bytes, no data sent), 2 directories, 1 other entries" in done.stdout, \
        done.stdout
    carried = proxied.proxy.bytes_to_secondary
    assert carried < 64 * KiB, f"{carried} bytes crossed the link for a clone of {12 * MiB}"
    copy = m / "vms" / "vm8"
    assert (copy / "disks" / "root.img").read_bytes() == (base / "disks" / "root.img").read_bytes()
    assert os.readlink(copy / "current") == "disks/root.img"
    assert os.stat(copy / "disks").st_mode == os.stat(base / "disks").st_mode
    assert proxied.status()["state"] == "InSync"
    proxied.assert_replicated()


def test_a_clone_into_another_group_is_a_copy_sent_as_data_and_says_so(cluster: Cluster) -> None:
    cluster.mount("--group", "vms/vm1")
    m = cluster.mnt
    write_random(m / "base.img", 2)
    (m / "tree").mkdir()
    (m / "tree" / "conf").write_text("memory=4G\n")
    write_random(m / "tree" / "disk.img", 1)
    done = run_fsrep("clone", str(m / "base.img"), str(m / "vms" / "vm1" / "disk.img"))
    groups = cluster.groups()
    vm1 = groups["/vms/vm1"]
    assert f"{m / 'vms' / 'vm1' / 'disk.img'} is in group {vm1['id']}" in done.stdout, done.stdout
    assert f"copied as data ({2 * MiB} bytes cross the link of group {vm1['id']})" in done.stdout, done.stdout
    done = run_fsrep("clone", str(m / "tree"), str(m / "vms" / "vm1" / "tree"))
    assert "2 files in another group copied as data" in done.stdout, done.stdout
    assert (m / "vms" / "vm1" / "disk.img").read_bytes() == (m / "base.img").read_bytes()
    assert {g["state"] for g in cluster.groups().values()} == {"InSync"}
    assert (vm1["bytes_cloned"], groups["/"]["bytes_cloned"]) == (0, 0)
    assert_group_replicated(cluster, groups)


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
@pytest.mark.parametrize("after", ["source removed", "source rewritten"])
def test_clones_are_replayed_from_their_backup_whatever_the_source_became(proxied: Cluster, after: str) -> None:
    """Three clones of a source that gained 64 KiB while out of sync share
    one backup; the resync stages it on the replica (the 64 KiB cross
    once) and replays the clones from it, though the source is gone or
    rewritten by then."""
    backups = proxied.primary_store / ".fsrep" / "clone-backups"
    backups.mkdir(parents=True)
    proxied.mount("--clone-backup", str(backups))
    m = proxied.mnt
    write_random(m / "base.img", 8)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    _rewrite(m / "base.img", 1 * MiB, 64 * KiB, b"s")
    for i in range(3):
        run_fsrep("clone", str(m / "base.img"), str(m / f"vm{i}.img"))
    kept = [p for p in backups.rglob("*") if p.is_file()]
    assert len(kept) == 1, f"three clones of one unchanged source kept {kept}"
    assert kept[0].read_bytes() == (m / "vm0.img").read_bytes()
    _rewrite(m / "vm1.img", 5 * MiB, 4 * KiB, b"c")  # a clone's own change after it was made
    if after == "source removed":
        os.unlink(m / "base.img")
        expected = 0
    else:
        write_random(m / "base.img", 8)
        expected = 8 * MiB  # the source itself is new data
    proxied.proxy.reset_counters()
    proxied.proxy.restore()
    status = proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    assert status["dirty_bytes"] == 0, status
    carried = proxied.proxy.bytes_to_secondary - expected
    assert carried < 1 * MiB, f"{carried} bytes beyond the source's own crossed for three clones of 8 MiB"
    assert status["resync"]["clones_replayed"] == 3, status["resync"]
    assert not [p for p in backups.rglob("*") if p.is_file()], "a backup outlived its clones' replay"
    staging = proxied.secondary.replica_root().parent / ".fsrep" / "clones"
    assert not [p for p in staging.rglob("*") if p.is_file()], "a staged backup was left on the replica"
    assert (m / "vm1.img").read_bytes()[5 * MiB:5 * MiB + 4 * KiB] == b"c" * 4 * KiB
    assert (m / "vm2.img").read_bytes()[1 * MiB:1 * MiB + 64 * KiB] == b"s" * 64 * KiB
    proxied.assert_replicated()


def test_a_clone_backup_dir_that_cannot_serve_is_refused_in_one_line(cluster: Cluster) -> None:
    (cluster.primary_store / "inside").mkdir()
    for where, expected in [(cluster.base / "missing", "make the directory first"),
                            (cluster.primary_store / "inside", "inside the store, where a group would replicate it"),
                            (cluster.mnt, "inside the mount")]:
        done = cluster.mount("--clone-backup", str(where), check=False)
        assert done.returncode != 0, where
        assert expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED, "resync failed: ", "resync interrupted")
def test_a_link_cut_while_a_replayed_clone_is_compared_leaves_nothing_wrongly_clean(proxied: Cluster) -> None:
    """The comparison cleans each region in the step that asks for its
    digests; cut before the answers, those regions are dirty again, and
    the next run compares them again rather than trusting them."""
    proxied.mount()
    m = proxied.mnt
    write_random(m / "disk.img", 64)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    run_fsrep("clone", str(m / "disk.img"), str(m / "copy.img"))
    _rewrite(m / "copy.img", 40 * MiB, 64 * KiB, b"c")  # a difference in the part compared after the cut
    proxied.proxy.restore()
    proxied.proxy.delay(0.25)  # a round trip per 16 MiB compared: the cut lands inside the comparison

    def comparing() -> bool:
        run = proxied.status()["resync"]
        return bool(run) and run["running"] and 0 < run["bytes_checked"] < 64 * MiB

    wait_for(comparing, "the replayed clone's comparison under way", timeout=RECONNECT_DEADLINE, step=0.02)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    proxied.proxy.reset_counters()
    proxied.proxy.restore()
    status = proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    assert status["dirty_bytes"] == 0, status
    carried = proxied.proxy.bytes_to_secondary
    assert carried < 8 * MiB, f"{carried} bytes crossed after the cut: the clone was copied, not compared again"
    proxied.assert_replicated()


def test_a_clone_copied_for_longer_than_the_ack_timeout_keeps_the_link(cluster: Cluster) -> None:
    """Without reflinks each side copies the data in its stream: the
    primary waits for the clone's ack as long as its size allows, and the
    secondary keeps the link alive meanwhile — no link lost, no resync."""
    cluster.mount("--ack-timeout", "0.3")
    m = cluster.mnt
    write_random(m / "big.img", 768)
    cluster.wait_state("InSync")
    done = run_fsrep("clone", str(m / "big.img"), str(m / "copy.img"), timeout=300)
    assert "replicated as one operation" in done.stdout, done.stdout
    status = cluster.status()
    assert (status["state"], status["resync"]) == ("InSync", None), status
    cluster.assert_replicated()


def test_a_large_clone_is_copied_while_the_mount_serves_and_the_source_is_written(cluster: Cluster) -> None:
    """Both sides copy a large clone off their event loops: another
    group's files are made meanwhile without waiting for the copy (this
    group's changes wait for it on the secondary, in order), and writes to
    the source during the copy end up in the copy as in the replica's
    (both copy the source as it is at the clone's place in the stream)."""
    cluster.mount("--group", "other")
    m = cluster.mnt
    write_random(m / "big.img", 768)
    wait_for(lambda: all(g["state"] == "InSync" for g in cluster.groups().values()), "both groups InSync")
    cloning = subprocess.Popen([*FSREP, "clone", str(m / "big.img"), str(m / "copy.img")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    longest, made, began = 0.0, 0, time.monotonic()
    with open(m / "big.img", "r+b") as source:
        while cloning.poll() is None and made < 10_000:
            started = time.monotonic()
            (m / "other" / f"meanwhile-{made}").write_bytes(b"x")
            longest = max(longest, time.monotonic() - started)
            if made < 8:  # while the primary copies: what it must bring its copy up to
                source.seek((made * 97 % 768) * MiB)
                source.write(b"w" * 4096)
            made += 1
    _, err = cloning.communicate(timeout=300)
    took = time.monotonic() - began
    assert cloning.returncode == 0, err
    assert made >= 3, f"the clone was over after {made} files: too fast to show anything"
    # Held, the mount would make the other group wait for the primary's whole copy: about half the clone.
    assert longest < 0.2 * took, f"a file of another group made during the {took:.2f}s clone waited {longest:.2f}s"
    groups = wait_for(lambda: (g := cluster.groups()) and all(x["state"] == "InSync" for x in g.values()) and g,
                      "both groups InSync")
    cluster.umount()
    assert_group_replicated(cluster, groups)
