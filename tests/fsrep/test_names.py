"""Names and paths at the kernel's limits, on a real mount: what ext4
refuses is refused with the same errno, what it accepts works and is
replicated — however deep the tree, and with a cold descriptor cache."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cluster, deep_chain

NAME_MAX = 255
PATH_MAX = 4096


CALLS: list[tuple[str, Callable[[Path], object]]] = [
    ("create", lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))),
    ("mkdir", os.mkdir),
    ("mkfifo", os.mkfifo),
    ("symlink", lambda p: os.symlink("target", p)),
    ("lstat", os.lstat),
    ("rename", lambda p: os.rename(Path(p).parent / "exists", p)),
    ("link", lambda p: os.link(Path(p).parent / "exists", p)),
]


def test_a_name_longer_than_name_max_fails_with_enametoolong(mounted: Cluster) -> None:
    (mounted.mnt / "exists").write_bytes(b"x")
    for what, call in CALLS:
        with pytest.raises(OSError) as caught:
            call(mounted.mnt / ("n" * (NAME_MAX + 1)))
        assert caught.value.errno == errno.ENAMETOOLONG, what
    mounted.assert_replicated()
    assert "internal error" not in mounted.primary_log()


def test_a_path_of_path_max_below_a_subdirectory_works(mounted: Cluster) -> None:
    """The path from the mount's root is longer than PATH_MAX; the kernel
    passes names one at a time, so it must work as on ext4."""
    top = mounted.mnt / "a" / "test-directory"
    top.mkdir(parents=True)
    part = "d" * 200
    levels = (PATH_MAX - 1 - 10) // (len(part) + 1)
    relative = "/".join([part] * levels) + "/" + "f" * (PATH_MAX - 1 - levels * (len(part) + 1))
    assert len(relative) == PATH_MAX - 1
    cwd = os.getcwd()
    os.chdir(top)
    try:
        os.makedirs(os.path.dirname(relative))
        with open(relative, "wb") as f:
            f.write(b"at the limit")
        with open(relative, "rb") as f:
            assert f.read() == b"at the limit"
    finally:
        os.chdir(cwd)
    mounted.assert_replicated()


def test_a_deep_tree_is_removed_through_a_cold_mount(cluster: Cluster) -> None:
    cluster.mount()
    deep_chain(cluster.mnt, 1100, name="dd", file_every=100)
    cluster.umount()
    cluster.mount()  # nothing cached: every path is resolved from the root again
    done = subprocess.run(["rm", "-rf", str(cluster.mnt / "dd")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert list(cluster.mnt.iterdir()) == []
    (cluster.mnt / "after").write_bytes(b"still replicating")
    cluster.assert_replicated()
    assert "internal error" not in cluster.primary_log()
