"""The secondary against a hand-written client: it applies in order, and
refuses anything that would reach outside the replica root or that comes
from a peer that has not authenticated."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
import trio

import transport as tp
from fsrep._config import read_key
from tests.conftest import Cluster, assert_same_tree, wait_for, write_random


async def _connect(cluster: Cluster, group: bytes) -> tuple[tp.Connection, tp.Welcome]:
    return await tp.open_primary_connection("127.0.0.1", cluster.secondary.port, read_key(str(cluster.key)),
                                            group, timeout=5)


async def _reply(conn: tp.Connection) -> tp.Frame:
    with trio.fail_after(10):
        return await conn.receive_event()


async def _outcome(conn: tp.Connection, seq: int) -> str:
    """Read replies until *seq* is acked ("applied") or refused ("refused")."""
    while True:
        reply = await _reply(conn)
        if isinstance(reply, tp.Nack):
            return "refused" if reply.seq == seq else f"refused {reply.seq}"
        if isinstance(reply, tp.Ack) and reply.seq >= seq:
            return "applied"


def _forged(frame: tp.Frame, placeholder: bytes, evil: bytes) -> bytes:
    """The bytes of *frame* with a path the frame classes refuse to build."""
    assert len(placeholder) == len(evil)
    data = tp.encode(frame)
    assert data.count(placeholder) == 1
    return data.replace(placeholder, evil)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim").write_bytes(b"untouched")
    return d


async def test_escaping_symlinks_are_refused(cluster: Cluster, outside: Path) -> None:
    group = uuid.uuid4().bytes
    conn, welcome = await _connect(cluster, group)
    assert welcome.last_seq == 0
    conn.enqueue(tp.Symlink(seq=1, path=b"dirlink", target=os.fsencode(outside), uid=0, gid=0))
    conn.enqueue(tp.Symlink(seq=2, path=b"filelink", target=os.fsencode(outside / "victim"), uid=0, gid=0))
    conn.enqueue(tp.Create(seq=3, path=b"dirlink/evil", mode=0o644, uid=0, gid=0))
    await conn.flush()
    assert await _outcome(conn, 3) == "refused"
    await conn.aclose()
    for op in (tp.Write(seq=3, path=b"filelink", offset=0, data=b"pwned"),
               tp.SetAttr(seq=3, path=b"filelink", fields=tp.ATTR_SIZE, size=0),
               tp.MkDir(seq=3, path=b"dirlink/sub", mode=0o755, uid=0, gid=0),
               tp.Rename(seq=3, old=b"filelink", new=b"dirlink/moved")):
        conn, welcome = await _connect(cluster, group)
        assert welcome.last_seq == 2, "the refused operation must not count as applied"
        await conn.send(op)
        assert await _outcome(conn, 3) == "refused", f"{type(op).__name__} through a symlink was not refused"
        await conn.aclose()
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"


@pytest.mark.parametrize("evil", [b"../escaped", b"/tmp/escap", b"a/../../xy", b"./escaped0"])
async def test_paths_outside_the_root_end_the_session(cluster: Cluster, evil: bytes) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    placeholder = b"p" * len(evil)
    conn._queue.append(_forged(tp.Create(seq=1, path=placeholder, mode=0o644, uid=0, gid=0), placeholder, evil))
    await conn.flush()
    with pytest.raises(tp.LinkDown, match="closed"):
        await _reply(conn)
    replica = cluster.secondary.store / str(uuid.UUID(bytes=group))
    assert os.listdir(replica) == []
    assert not (cluster.secondary.store / "escaped").exists()
    assert not Path("/tmp/escap").exists()
    log = (cluster.secondary.store / ".fsrep" / "serve.log").read_text()
    assert "dropping connection" in log


async def test_operations_before_authentication_are_never_applied(cluster: Cluster) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", cluster.secondary.port)
    await stream.send_all(tp.encode(tp.Create(seq=1, path=b"sneaky", mode=0o644, uid=0, gid=0)))
    with trio.fail_after(10):
        while await stream.receive_some(4096):
            pass  # the secondary answers with an Error frame and closes
    await stream.aclose()
    assert [p.name for p in cluster.secondary.store.iterdir()] == [".fsrep"]


async def test_garbage_and_oversized_frames_drop_the_connection(cluster: Cluster) -> None:
    for junk in (b"\x00" * 64, b"\xff\xff\xff\xff\x01\x0a" + b"x" * 100, os.urandom(1000)):
        stream = await trio.open_tcp_stream("127.0.0.1", cluster.secondary.port)
        await stream.send_all(junk)
        with trio.fail_after(10):
            while await stream.receive_some(4096):
                pass
        await stream.aclose()
    conn, welcome = await _connect(cluster, uuid.uuid4().bytes)  # and it still serves honest peers
    assert welcome.last_seq == 0
    await conn.aclose()


async def test_operations_apply_in_order_and_acks_are_cumulative(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    conn.enqueue(tp.Create(seq=1, path=b"log", mode=0o600, uid=0, gid=0))
    for seq in range(2, 201):
        conn.enqueue(tp.Write(seq=seq, path=b"log", offset=(seq - 1) * 3, data=b"%03d" % seq))
    conn.enqueue(tp.Fsync(seq=201, path=b"log"))
    await conn.flush()
    last = 0
    while last < 201:
        reply = await _reply(conn)
        assert isinstance(reply, tp.Ack)
        assert reply.seq > last
        last = reply.seq
    await conn.aclose()
    data = (cluster.secondary.store / str(uuid.UUID(bytes=group)) / "log").read_bytes()
    assert data == b"\0" * 3 + b"".join(b"%03d" % s for s in range(2, 201))


async def test_listing_and_remove_answer_at_their_place_in_the_stream(cluster: Cluster, outside: Path) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    conn.enqueue(tp.MkDir(seq=1, path=b"d", mode=0o750, uid=7, gid=8))
    conn.enqueue(tp.Create(seq=2, path=b"d/f", mode=0o640, uid=7, gid=8))
    conn.enqueue(tp.Write(seq=3, path=b"d/f", offset=0, data=b"12345"))
    conn.enqueue(tp.MkDir(seq=4, path=b"d/sub", mode=0o700, uid=0, gid=0))
    conn.enqueue(tp.ListDir(seq=5, path=b"d"))
    conn.enqueue(tp.Remove(seq=6, path=b"d/sub"))
    conn.enqueue(tp.Remove(seq=7, path=b"d/never-existed"))
    conn.enqueue(tp.ListDir(seq=8, path=b"d", after=b"e"))
    conn.enqueue(tp.Symlink(seq=9, path=b"out", target=os.fsencode(outside), uid=0, gid=0))
    conn.enqueue(tp.ListDir(seq=10, path=b"out"))
    await conn.flush()
    listings = []
    while True:
        reply = await _reply(conn)
        if isinstance(reply, tp.Listing):
            listings.append(reply)
        elif isinstance(reply, tp.Nack):
            assert reply.seq == 10, "listing through a symlink must be refused"
            break
    await conn.aclose()
    first, second = listings
    assert [(e.name, oct(e.mode & 0o7777), e.uid) for e in first.items()] == [(b"f", "0o640", 7), (b"sub", "0o700", 0)]
    assert first.items()[0].size == 5
    assert [e.name for e in second.items()] == [b"f"]
    assert second.more == 0
    replica = cluster.secondary.store / str(uuid.UUID(bytes=group))
    assert sorted(os.listdir(replica / "d")) == ["f"]
    assert os.listdir(outside) == ["victim"]


async def test_a_peer_cannot_write_to_a_host_device_through_a_node_it_made(cluster: Cluster, tmp_path: Path) -> None:
    backing = tmp_path / "loop-backing"
    backing.write_bytes(b"\0" * (1024 * 1024))
    loop = (await trio.run_process(["losetup", "--find", "--show", str(backing)], capture_stdout=True)
            ).stdout.decode().strip()
    try:
        rdev = os.stat(loop).st_rdev
        group = uuid.uuid4().bytes
        conn, _ = await _connect(cluster, group)
        await conn.send(tp.MkNod(seq=1, path=b"dev", mode=stat.S_IFBLK | 0o600, rdev=rdev, uid=0, gid=0))
        assert await _outcome(conn, 1) == "applied"
        await conn.aclose()
        for make in (lambda seq: tp.Write(seq=seq, path=b"dev", offset=0, data=b"pwned"),
                     lambda seq: tp.WriteRuns.of(seq, b"dev", [(512, b"pwned")]),
                     lambda seq: tp.SetAttr(seq=seq, path=b"dev", fields=tp.ATTR_SIZE, size=0),
                     lambda seq: tp.Checksum(seq=seq, path=b"dev", offset=0, count=1),
                     lambda seq: tp.Fsync(seq=seq, path=b"dev")):
            conn, welcome = await _connect(cluster, group)
            op = make(welcome.last_seq + 1)
            await conn.send(op)
            outcome = await _outcome(conn, op.seq)
            await conn.aclose()
            if isinstance(op, (tp.Checksum, tp.Fsync)):
                assert outcome == "applied", f"{type(op).__name__} of a node is answered without opening it"
            else:
                assert outcome == "refused", f"{type(op).__name__} to a device node was applied"
        replica = cluster.secondary.store / str(uuid.UUID(bytes=group))
        assert stat.S_ISBLK(os.lstat(replica / "dev").st_mode)
    finally:
        await trio.run_process(["losetup", "--detach", loop])
    assert backing.read_bytes() == b"\0" * (1024 * 1024), "the device's backing file was written"


def test_a_session_that_ends_on_a_full_replica_disk_leaves_the_replica_ready(tmp_path: Path) -> None:
    """The secondary's store on a small tmpfs: a write past its size fails,
    the position cannot be saved either; once the primary removes the file,
    the next session resyncs and the group is InSync again."""
    cluster = Cluster(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "fsrep-test", str(cluster.secondary.store)],
                   check=True)
    try:
        cluster.secondary.start()
        cluster.mount()
        (cluster.mnt / "small").write_bytes(b"kept")
        try:
            write_random(cluster.mnt / "big", 15)  # sync: written here, refused there
        except OSError:
            pass
        wait_for(lambda: cluster.status()["state"] != "InSync", "the refused write to take the group out of sync")
        (cluster.mnt / "big").unlink()
        wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0,
                 "InSync again once the file is gone", timeout=60)
        cluster.umount()
        assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())
        log = (cluster.secondary.store / ".fsrep" / "serve.log").read_text()
        assert "did not complete" not in cluster.primary_log()
        assert "Traceback" not in log
    finally:
        cluster.cleanup()
        subprocess.run(["umount", "-l", str(cluster.secondary.store)], check=False)


def _fill(root: Path, tag: str) -> None:
    (root / f"dir-{tag}" / "sub").mkdir(parents=True)
    write_random(root / f"dir-{tag}" / "sub" / "data", 2)
    (root / f"note-{tag}").write_text(f"written {tag}\n")


def _wait_in_sync_again(cluster: Cluster) -> dict:
    return wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0 and s,
                    "the group InSync again", timeout=60)


def test_a_replica_directory_removed_while_the_secondary_is_down_gets_a_baseline(cluster: Cluster) -> None:
    cluster.mount()
    _fill(cluster.mnt, "before")
    group = cluster.status()["id"]
    root = cluster.secondary.replica_root()
    cluster.secondary.stop()
    shutil.rmtree(root)
    cluster.secondary.start()
    _wait_in_sync_again(cluster)
    _fill(cluster.mnt, "after")
    cluster.umount()
    assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())
    log = (cluster.secondary.store / ".fsrep" / "serve.log").read_text()
    said = [line for line in log.splitlines() if "was removed or replaced" in line]
    assert len(said) == 1, said
    assert group in said[0]
    assert "starting an empty replica at seq 0" in said[0]
    assert "cannot open replica" not in log
    announced = [line for line in cluster.primary_log().splitlines() if "resync of the whole tree" in line]
    assert len(announced) == 1, announced
    assert group in announced[0]
    assert "empty replica" in announced[0]
    cluster.assert_no_errors_logged()


def test_a_replica_directory_removed_under_a_running_secondary_gets_a_baseline(cluster: Cluster) -> None:
    cluster.mount()
    _fill(cluster.mnt, "before")
    group = cluster.status()["id"]
    shutil.rmtree(cluster.secondary.replica_root())
    log = cluster.secondary.store / ".fsrep" / "serve.log"
    wait_for(lambda: "was removed or replaced" in log.read_text(), "the secondary to notice the removal")
    _wait_in_sync_again(cluster)
    _fill(cluster.mnt, "after")
    cluster.umount()
    assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())
    assert f"group {group}: the replica directory" in log.read_text()
    assert "empty replica" in cluster.primary_log()
