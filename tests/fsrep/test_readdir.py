"""Listing directories through a real mount: a large directory whole and
from any offset, a directory that changes while it is listed, the memory
an open directory costs the daemon, and ``.fsrep`` hidden at a group root."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsrep._dirstream import DirStream
from tests.conftest import Cluster, assert_no_unexpected_log, empty_files, wait_for

BIG = 20_000
HANDLES = 300
GROUP_ENTRIES = 1000
CHURN = 1500
CHANGE_EVERY = 250  # entries listed between two changes of the directory
CHANGES = 30  # entries removed, and added, at each
FD_SLACK = 8  # descriptors the daemon may open or close meanwhile (its caches)
MiB = 1024 * 1024
RSS_BUDGET = 16 * MiB  # for HANDLES handles on BIG entries; a copy of the listing in each took ~320 MiB


def _all_in_sync(cluster: Cluster, timeout: float = 60) -> None:
    wait_for(lambda: {g["state"] for g in cluster.groups().values()} == {"InSync"}, "every group InSync", timeout)


@contextlib.contextmanager
def _on_tmpfs(*paths: Path) -> Iterator[None]:
    """A tmpfs mounted on each of the empty directories *paths* meanwhile."""
    mounted: list[Path] = []
    try:
        for path in paths:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "fsrep-test-readdir", str(path)], check=True)
            mounted.append(path)
        yield
    finally:
        for path in mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A mount, InSync, whose ``big`` holds BIG entries, for the whole module.

    Both stores are on tmpfs, where BIG files take a second to make
    (ext4's offsets are the churn test's and test_dirstream's). ``big`` is
    made while both daemons are stopped, in the primary store and (copied
    with its times) in the replica, as a finished baseline leaves them: a
    baseline of BIG entries would take long, and is not what is tested here."""
    cluster = Cluster(tmp_path_factory.mktemp("readdir"))
    cluster.memory_cap = 2 << 30
    with _on_tmpfs(cluster.primary_store, cluster.secondary.store):
        try:
            cluster.secondary.start()
            cluster.mount()
            cluster.umount()
            cluster.secondary.stop()
            (cluster.primary_store / "big").mkdir()
            empty_files(cluster.primary_store / "big", BIG)
            subprocess.run(["cp", "-a", str(cluster.primary_store / "big"), str(cluster.secondary.replica_root())],
                           check=True)
            cluster.secondary.start()
            cluster.mount()
            assert cluster.status()["state"] == "InSync"
            yield cluster
            cluster.assert_replicated()
        finally:
            cluster.cleanup()
    assert_no_unexpected_log([cluster], [])  # outlives each test, so no test's teardown reads its logs


def _store_names(path: Path) -> set[bytes]:
    return {os.fsencode(name) for name in os.listdir(path)}


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_large_directory_lists_each_entry_once(big: Cluster) -> None:
    with os.scandir(big.mnt / "big") as entries:
        found = [(entry.name, entry.inode()) for entry in entries]
    names = [os.fsencode(name) for name, _ in found]
    assert len(names) == len(set(names)) == BIG
    assert set(names) == _store_names(big.primary_store / "big")
    for name, inode in found[::1000]:  # each entry came with the attributes a lookup gives
        assert os.lstat(big.mnt / "big" / name).st_ino == inode


def test_a_listing_goes_on_from_any_offset_it_gave_and_rewinds(big: Cluster) -> None:
    stream = DirStream(os.open(big.mnt / "big", os.O_RDONLY | os.O_DIRECTORY))
    try:
        whole = list(stream.entries(0))
        assert sorted(name for name, _ in whole) == sorted(_store_names(big.primary_store / "big"))
        for cut in (1, len(whole) // 3, len(whole) - 1):  # an lseek on the mount: a seekdir
            assert list(stream.entries(whole[cut - 1][1])) == whole[cut:]
        assert list(stream.entries(0)) == whole
    finally:
        stream.close()


def test_a_directory_handle_is_fsynced_while_it_lists(big: Cluster) -> None:
    fd = os.open(big.mnt / "big", os.O_RDONLY | os.O_DIRECTORY)
    try:
        stream = DirStream(fd)
        first = next(stream.entries(0))
        os.fsync(fd)
        assert first in list(stream.entries(0))
    finally:
        os.close(fd)


def test_open_handles_on_a_large_directory_hold_no_copy_of_it(big: Cluster) -> None:
    os.listdir(big.mnt / "big")  # every entry already known to the daemon's inode table
    pid = big.primary_pid()
    rss, fds = _rss(pid), _open_fds(pid)
    with contextlib.ExitStack() as handles:
        for _ in range(HANDLES):
            next(handles.enter_context(os.scandir(big.mnt / "big")))  # the listing has begun
        grown, held = _rss(pid) - rss, _open_fds(pid) - fds
    print(f"{HANDLES} open handles on {BIG} entries: the primary's RSS grew from {rss / MiB:.1f} MiB "
          f"by {grown / MiB:.1f} MiB")
    assert grown < RSS_BUDGET, f"{HANDLES} open handles grew the primary by {grown / MiB:.0f} MiB"
    assert held >= HANDLES - FD_SLACK, "an open directory is a descriptor of the store's"
    wait_for(lambda: _open_fds(pid) <= fds + FD_SLACK, "the daemon to close the released directories' descriptors")


@pytest.mark.parametrize("tmpfs", [False, True], ids=["tmp_path", "tmpfs"])
def test_entries_unchanged_while_a_directory_changes_show_exactly_once(tmp_path: Path, tmpfs: bool) -> None:
    cluster = Cluster(tmp_path)
    # Offsets are hash positions on ext4 (tmp_path here) and XFS, counters on tmpfs.
    with _on_tmpfs(cluster.primary_store) if tmpfs else contextlib.nullcontext():
        try:
            (cluster.primary_store / "churn").mkdir()
            initial = empty_files(cluster.primary_store / "churn", CHURN)
            cluster.secondary.start()
            cluster.mount()
            cluster.wait_state("InSync", timeout=120)
            removed, added, seen = _list_while_changing(cluster.mnt / "churn", initial)
            assert [name for name, times in seen.items() if times > 1] == []
            assert initial - removed <= set(seen), "an entry that stayed was lost"
            assert set(seen) <= initial | added
            assert removed, "the directory did not change while it was listed"
            cluster.assert_replicated()
        finally:
            cluster.cleanup()


def _list_while_changing(directory: Path, initial: set[bytes]) -> tuple[set[bytes], set[bytes], Counter[bytes]]:
    """List *directory*, removing and adding entries every CHANGE_EVERY
    entries; returns (removed, added, how many times each name was seen)."""
    removed: set[bytes] = set()
    added: set[bytes] = set()
    seen: Counter[bytes] = Counter()
    with os.scandir(directory) as entries:
        for count, entry in enumerate(entries, 1):
            assert count <= 2 * len(initial), "the listing does not end"
            seen[os.fsencode(entry.name)] += 1
            if count % CHANGE_EVERY == 0:
                victims = sorted(initial - removed)[count % 7::11][:CHANGES]  # some already listed, some not
                for victim in victims:
                    os.unlink(directory / os.fsdecode(victim))
                removed.update(victims)
                added |= empty_files(directory, CHANGES, prefix=f"new{count}")
    return removed, added, seen


def test_fsrep_stays_hidden_at_a_group_root_listed_in_batches(cluster: Cluster) -> None:
    (cluster.primary_store / "vm" / "sub").mkdir(parents=True)
    empty_files(cluster.primary_store / "vm", GROUP_ENTRIES)
    cluster.mount("--group", "vm")
    _all_in_sync(cluster)
    (cluster.mnt / "vm" / "sub" / ".fsrep").write_text("below a group's root an ordinary name")
    reserved = cluster.primary_store / "vm" / ".fsrep"
    reserved.mkdir()  # as a replica's state there would be
    try:
        names = [os.fsencode(name) for name in os.listdir(cluster.mnt / "vm")]
        assert len(names) == len(set(names)) == GROUP_ENTRIES + 1
        assert set(names) == _store_names(cluster.primary_store / "vm") - {b".fsrep"}
        assert os.listdir(cluster.mnt / "vm" / "sub") == [".fsrep"]
    finally:
        reserved.rmdir()
    cluster.umount()
