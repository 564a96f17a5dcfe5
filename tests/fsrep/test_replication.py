"""Scenarios on a real mount replicating to a real secondary; each ends by
unmounting and comparing both trees by digest."""

from __future__ import annotations

import errno
import os
import sqlite3
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import Cluster


def test_write_overwrite_append_are_replicated(mounted: Cluster) -> None:
    f = mounted.mnt / "file"
    f.write_bytes(b"a" * 10000)
    with open(f, "r+b") as h:
        h.seek(100)
        h.write(b"B" * 50)
    with open(f, "ab") as h:
        h.write(b"tail")
    assert f.read_bytes() == b"a" * 100 + b"B" * 50 + b"a" * 9850 + b"tail"
    mounted.assert_replicated()


def test_sparse_writes_and_truncate_up_and_down(mounted: Cluster) -> None:
    f = mounted.mnt / "sparse"
    with open(f, "wb") as h:
        h.seek(5 * 1024 * 1024)
        h.write(b"end")
        h.seek(4096)
        h.write(b"middle")
    os.truncate(f, 10 * 1024 * 1024)
    os.truncate(f, 4100)
    g = mounted.mnt / "grow"
    g.write_bytes(b"x")
    os.truncate(g, 123457)
    assert os.path.getsize(f) == 4100
    mounted.assert_replicated()


def test_namespace_operations(mounted: Cluster) -> None:
    m = mounted.mnt
    (m / "d1" / "d2").mkdir(parents=True)
    (m / "d1" / "d2" / "f").write_text("one")
    (m / "d1" / "d2" / "f").rename(m / "d1" / "g")
    os.link(m / "d1" / "g", m / "hard")
    os.symlink("d1/g", m / "sym")
    os.symlink("/nonexistent/absolute", m / "dangling")
    (m / "d1" / "d2").rename(m / "moved")
    (m / "moved" / "inner").mkdir()
    (m / "gone").write_text("x")
    (m / "gone").unlink()
    (m / "emptydir").mkdir()
    (m / "emptydir").rmdir()
    os.mkfifo(m / "fifo", 0o640)
    assert (m / "sym").read_text() == "one"
    assert os.stat(m / "hard").st_nlink == 2
    mounted.assert_replicated()


def test_rename_over_an_existing_file(mounted: Cluster) -> None:
    m = mounted.mnt
    (m / "new").write_text("new contents")
    (m / "old").write_text("old contents")
    os.rename(m / "new", m / "old")
    assert (m / "old").read_text() == "new contents"
    assert not (m / "new").exists()
    mounted.assert_replicated()


def test_chmod_chown_utime_and_xattrs(mounted: Cluster) -> None:
    m = mounted.mnt
    f = m / "f"
    f.write_text("x")
    os.chmod(f, 0o4751)
    os.chown(f, 1234, 5678)
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    os.setxattr(f, "user.colour", b"blue")
    os.setxattr(f, "user.gone", b"soon")
    os.removexattr(f, "user.gone")
    (m / "d").mkdir()
    os.setxattr(m / "d", "user.dir", b"\x00\x01binary")
    st = os.stat(f)
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 5678, 2_000_000_000)
    assert os.listxattr(f) == ["user.colour"]
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.gone")
    assert info.value.errno == errno.ENODATA
    replica = mounted.secondary.replica_root()
    mounted.assert_replicated()
    assert os.stat(replica / "f").st_mtime_ns == 2_000_000_000


# A version 2 file capability granting cap_net_bind_service (bit 10), permitted and effective.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def test_file_capabilities_set_after_writes_are_dropped_by_the_next_write_on_both_sides(mounted: Cluster) -> None:
    """The kernel asks for security.capability before each write; the
    answer "none", remembered from the first writes, must not outlive a
    setxattr that adds one: the next write still drops it, here and on
    the replica."""
    f = mounted.mnt / "tool"
    with open(f, "wb", buffering=0) as out:
        for _ in range(3):
            out.write(b"x" * 4096)
    os.setxattr(f, "security.capability", CAPABILITY)
    assert os.getxattr(f, "security.capability") == CAPABILITY
    with open(f, "r+b", buffering=0) as out:
        out.write(b"y")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "security.capability")
    assert info.value.errno == errno.ENODATA
    mounted.assert_replicated()
    assert "security.capability" not in os.listxattr(mounted.secondary.replica_root() / "tool")


def test_file_unlinked_while_open(mounted: Cluster) -> None:
    m = mounted.mnt
    with open(m / "tmp", "w+b") as h:
        h.write(b"before")
        os.unlink(m / "tmp")
        h.write(b" after unlink")
        h.flush()
        h.seek(0)
        assert h.read() == b"before after unlink"
        assert os.fstat(h.fileno()).st_nlink == 0
        (m / "tmp").write_text("a new file with the old name")
    assert (m / "tmp").read_text() == "a new file with the old name"
    mounted.assert_replicated()


def test_thousands_of_small_files(mounted: Cluster) -> None:
    for i in range(40):
        d = mounted.mnt / f"dir{i:02d}"
        d.mkdir()
        for j in range(60):
            (d / f"f{j}").write_bytes(os.urandom(j * 7))
    assert sum(1 for _ in mounted.mnt.rglob("f*")) == 2400
    mounted.assert_replicated()


WRITER = """
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
path = os.path.join(root, f"writer{n}")
with open(path, "wb") as f:
    for i in range(300):
        f.write(os.urandom(4096 + n))
        if i % 50 == 0:
            f.flush(); os.fsync(f.fileno())
shared = os.path.join(root, "shared")
fd = os.open(shared, os.O_WRONLY | os.O_CREAT, 0o644)
for i in range(200):
    os.pwrite(fd, bytes([n]) * 512, (i * 4 + n) * 512)
os.close(fd)
os.makedirs(os.path.join(root, "tree", str(n)), exist_ok=True)
for i in range(100):
    os.rename(path, path + ".tmp") if i % 2 == 0 else os.rename(path + ".tmp", path)
"""


def test_concurrent_writers_in_several_processes(mounted: Cluster) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(mounted.mnt), str(n)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert os.path.getsize(mounted.mnt / "shared") == (199 * 4 + 3 + 1) * 512
    mounted.assert_replicated()


def test_unpack_a_source_tarball(mounted: Cluster, tmp_path: Path) -> None:
    source = Path(tarfile.__file__).parent / "email"
    archive = tmp_path / "src.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname="email")
    subprocess.run(["tar", "-xf", str(archive), "-C", str(mounted.mnt)], check=True, timeout=120)
    count = sum(1 for _ in (mounted.mnt / "email").rglob("*.py"))
    assert count > 10
    mounted.assert_replicated()


def test_sqlite_database_with_many_transactions(mounted: Cluster) -> None:
    db = sqlite3.connect(mounted.mnt / "app.db")
    db.execute("create table t (id integer primary key, v text)")
    for i in range(200):
        with db:
            db.execute("insert into t (v) values (?)", (f"row {i}" * 10,))
            if i % 10 == 0:
                db.execute("delete from t where id % 7 = 0")
    db.close()
    check = sqlite3.connect(mounted.mnt / "app.db")
    (count,) = check.execute("select count(*) from t").fetchone()
    check.close()
    assert count > 150
    mounted.assert_replicated()
    replica = sqlite3.connect(mounted.secondary.replica_root() / "app.db")
    assert replica.execute("pragma integrity_check").fetchone() == ("ok",)
    assert replica.execute("select count(*) from t").fetchone() == (count,)
    replica.close()


def test_writeback_cache_mode_replicates_on_close(cluster: Cluster) -> None:
    cluster.mount("--writeback-cache")
    data = os.urandom(3 * 1024 * 1024 + 17)
    (cluster.mnt / "big").write_bytes(data)
    with open(cluster.mnt / "big", "r+b") as f:
        f.seek(1000)
        f.write(b"patched")
    assert (cluster.mnt / "big").read_bytes()[1000:1007] == b"patched"
    cluster.assert_replicated()


def test_remount_continues_in_sync(mounted: Cluster) -> None:
    (mounted.mnt / "first").write_text("1")
    mounted.umount()
    mounted.mount()
    assert mounted.status()["state"] == "InSync"
    (mounted.mnt / "second").write_text("2")
    mounted.assert_replicated()


def test_fsrep_metadata_is_hidden_and_reserved(mounted: Cluster) -> None:
    assert ".fsrep" not in os.listdir(mounted.mnt)
    assert not (mounted.mnt / ".fsrep").exists()
    with pytest.raises(OSError):
        (mounted.mnt / ".fsrep").mkdir()
    (mounted.mnt / "sub").mkdir()
    (mounted.mnt / "sub" / ".fsrep").write_text("only the root name is reserved")
    mounted.assert_replicated()
