"""The secondary against a hand-written client: it applies in order, and
refuses anything that would reach outside the replica root or that comes
from a peer that has not authenticated; a flood of peers that never
authenticate does not keep the primary out, and a replica's live session
is never taken over by a second claimant."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import trio

import transport as tp
from fsrep._accept import MAX_HANDSHAKES_PER_ADDRESS
from fsrep._config import read_key
from fsrep._secondary import PROBE_TIMEOUT
from tests.conftest import (
    AT,
    DEADLINE,
    LINK_CLOSED,
    LINK_LOST,
    REFUSED_PEER,
    RESERVE_GIVEN_UP,
    SESSION_CLOSED,
    Cluster,
    _wait_daemon_gone,
    assert_same_tree,
    run_fsrep,
    wait_for,
    write_random,
)

# The hand-written client hangs up without a Close frame, which the secondary logs (when it sees it in time).
pytestmark = pytest.mark.expect_log(SESSION_CLOSED)

# What the secondary says when it refuses a peer, for @pytest.mark.expect_log.
THROUGH_A_SYMLINK = (r" ERROR \S+: group \S+: cannot apply seq 3 \(\w+\)" + AT + r": \[Errno (?:20|40)\] (?:Not a "
                     r"directory: b'dirlink'|'filelink' is not a regular file); ending the session$")
OUTSIDE_THE_ROOT = (r" WARNING \S+: (?:dropping connection with \S+|group \S+: session with \S+ ended: protocol error "
                    r"from \S+): invalid Create frame: \[Errno 22\] Create\.path b'[^']*' is absolute or has an empty, "
                    r"'\.' or '\.\.' component$")
UNAUTHENTICATED = REFUSED_PEER + r"protocol error from \S+: "
LISTING_THROUGH_A_SYMLINK = (r" ERROR \S+: group \S+: cannot apply seq 10 \(ListDir\)" + AT + r": \[Errno 20\] Not a "
                             r"directory: b'out'; ending the session$")
THROUGH_A_NODE = (r" ERROR \S+: group \S+: cannot apply seq 2 \((?:Write|WriteRuns|SetAttr)\)" + AT + r": \[Errno 22\] "
                  r"'dev' is not a regular file; ending the session$")
REPLICA_DISK_FULL = (
    LINK_LOST + r"secondary could not apply seq \d+: ENOSPC \[Errno 28\] No space left on device$",
    r" ERROR \S+: group \S+: cannot apply seq \d+ \(\w+\)" + AT + r": \[Errno 28\] No space left on device; ending the "
    r"session$",
    r" ERROR \S+: group \S+: cannot save the replica position(?: at the end of the session)?: \[Errno 28\] No space "
    r"left on device",
)
REPLICA_REPLACED = (r" WARNING \S+: group \S+: the replica directory \S+ was removed or replaced \(the replica was at "
                    r"seq \d+\); starting an empty replica at seq 0, which the primary fills with a baseline$")
REPLICA_REMOVED = (r" WARNING \S+: group \S+: the replica directory \S+ was removed; ending the session so that the "
                   r"primary reconnects to an empty replica$")
MADE_ROOM = r" WARNING \S+: closed a connection still authenticating to make room: "
HUGE_FRAME = UNAUTHENTICATED + r"frame length 4194304 outside 2\.\.4096\)?$"
HELD = r" WARNING \S+: dropping connection with \S+: group \S+ is held by a live session from \S+; refusing$"
DEAD_SESSION = r" WARNING \S+: group \S+: the session from \S+ is dead \(silent for \d+s\); \S+ replaces it$"


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


@pytest.mark.expect_log(THROUGH_A_SYMLINK)
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
@pytest.mark.expect_log(OUTSIDE_THE_ROOT)
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


@pytest.mark.expect_log(UNAUTHENTICATED)
async def test_operations_before_authentication_are_never_applied(cluster: Cluster) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", cluster.secondary.port)
    await stream.send_all(tp.encode(tp.Create(seq=1, path=b"sneaky", mode=0o644, uid=0, gid=0)))
    with trio.fail_after(10):
        while await stream.receive_some(4096):
            pass  # the secondary answers with an Error frame and closes
    await stream.aclose()
    assert [p.name for p in cluster.secondary.store.iterdir()] == [".fsrep"]


@pytest.mark.expect_log(UNAUTHENTICATED)
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


@pytest.mark.expect_log(LISTING_THROUGH_A_SYMLINK)
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


@pytest.mark.expect_log(THROUGH_A_NODE)
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


@pytest.mark.expect_log(LINK_CLOSED, *REPLICA_DISK_FULL, RESERVE_GIVEN_UP)
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


@pytest.mark.expect_log(LINK_CLOSED, REPLICA_REPLACED)
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


@pytest.mark.expect_log(LINK_CLOSED, REPLICA_REMOVED, REPLICA_REPLACED)
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


# --- peers that never authenticate ------------------------------------------------------------------------------

OPEN_FILES = 256  # the secondary's soft and hard limit: raising soft to hard gains nothing
FLOOD = 400  # idle connections at once, more than the secondary has descriptors
HUGE_HEADERS = 50  # connections announcing a 4 MiB frame before authenticating


def _connections(port: int, source: str, count: int, first: bytes = b"") -> list[socket.socket]:
    """*count* connections to the secondary from *source* that send *first*
    and then nothing; a connection that fails is not kept."""
    made = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(first)
        except OSError:
            sock.close()
            continue
        made.append(sock)
    return made


class _Flood:
    """Connections to the secondary from another loopback address that
    never authenticate, all kept open on this side (as a peer holding them
    would): a burst of *count* at once, then more at a steady pace from a
    thread until the end of the ``with`` block."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.port, self.source, self.count = port, source, count
        self.sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_coming, name="flood", daemon=True)

    def _keep_coming(self) -> None:
        while not self._stop.wait(0.1) and len(self.sockets) < 10 * self.count:
            self.sockets += _connections(self.port, self.source, 10)

    def __enter__(self) -> _Flood:
        needed = 20 * self.count
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
        self.sockets += _connections(self.port, self.source, self.count)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)
        for sock in self.sockets:
            sock.close()


def _rss(pid: int) -> int:
    """Resident memory of *pid* in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _dropped(sock: socket.socket) -> bool:
    """Whether the secondary closed *sock* (reading to its end)."""
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.expect_log(MADE_ROOM, HUGE_FRAME)
def test_a_flood_of_peers_that_never_authenticate_does_not_keep_the_primary_out(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.secondary.open_files = OPEN_FILES
    cluster.secondary.memory_cap = 4 << 30
    cluster.secondary.start()
    log = cluster.secondary.store / ".fsrep" / "serve.log"
    try:
        assert f"open-file limit: {OPEN_FILES}" in log.read_text()
        pid = cluster.secondary.proc.pid
        memory_before, log_before = _rss(pid), log.stat().st_size
        huge = struct.pack(">IBB", tp.MAX_DATA, tp.PROTOCOL_VERSION, tp.Hello.TYPE) + b"x" * 1000
        with _Flood(cluster.secondary.port, "127.0.0.2", FLOOD) as flood:
            assert len(flood.sockets) == FLOOD
            announced = _connections(cluster.secondary.port, "127.0.0.3", HUGE_HEADERS, huge)
            try:
                assert len(announced) == HUGE_HEADERS
                cluster.mount()  # from 127.0.0.1, while the flood goes on
                assert cluster.status()["state"] == "InSync"
                (cluster.mnt / "through").write_bytes(b"replicated despite the flood")
                assert (cluster.secondary.replica_root() / "through").read_bytes() == b"replicated despite the flood"
                assert all(_dropped(sock) for sock in announced), "a peer announcing a huge frame was kept"
            finally:
                for sock in announced:
                    sock.close()
            wait_for(lambda: len(flood.sockets) > 2 * FLOOD, "the flood to go on")
            (cluster.mnt / "later").write_bytes(b"and still")
            status = cluster.status()
            assert status["state"] == "InSync", status
            assert status["connected"]
            memory_after = _rss(pid)
        assert memory_after < memory_before + 64 * 1024 * 1024, (memory_before, memory_after)
        cluster.assert_replicated()  # no ERROR and no traceback in either log
        grown = log.stat().st_size - log_before
        assert grown < 16 * 1024, f"serve.log grew by {grown} bytes during the flood"
        text = log.read_text()
        assert "closed a connection still authenticating to make room" in text
        assert f"{MAX_HANDSHAKES_PER_ADDRESS} from 127.0.0.2 were authenticating" in text
    finally:
        cluster.cleanup()


# --- a replica's session and a second claimant -----------------------------------------------------------------


async def _serve_as_primary(conn: tp.Connection, acked: trio.Event) -> None:
    """Answer the secondary's pings and note its first ack, as a primary does."""
    while True:
        event = await conn.receive_event()
        if isinstance(event, tp.Ping):
            await conn.send(tp.Pong(token=event.token))
        elif isinstance(event, tp.Ack):
            acked.set()


@pytest.mark.expect_log(HELD)
async def test_a_live_session_keeps_its_replica_and_a_second_claimant_is_refused(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    holder, _ = await _connect(cluster, group)
    holder_port = holder.stream.socket.getsockname()[1]
    refusal = rf"group {uuid.UUID(bytes=group)} is held by a live session from 127\.0\.0\.1:{holder_port}; refusing"
    acked = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_as_primary, holder, acked)
        for _ in range(3):
            with pytest.raises(tp.LinkDown, match=refusal):
                await _connect(cluster, group)
        await holder.send(tp.Create(seq=1, path=b"still-mine", mode=0o644, uid=0, gid=0))
        with trio.fail_after(10):
            await acked.wait()
        nursery.cancel_scope.cancel()
    await holder.aclose()
    assert (cluster.secondary.store / str(uuid.UUID(bytes=group)) / "still-mine").exists()


@pytest.mark.expect_log(DEAD_SESSION)
async def test_a_session_that_no_longer_answers_is_replaced_within_the_probe_timeout(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    silent, _ = await _connect(cluster, group)  # never reads again: a primary gone behind a cut link
    start = trio.current_time()
    conn, _ = await _connect(cluster, group)
    waited = trio.current_time() - start
    assert PROBE_TIMEOUT <= waited < PROBE_TIMEOUT + 1.5
    await conn.send(tp.Create(seq=1, path=b"newcomer", mode=0o644, uid=0, gid=0))
    assert await _outcome(conn, 1) == "applied"
    await conn.aclose()
    await silent.aclose()
    assert "is dead" in (cluster.secondary.store / ".fsrep" / "serve.log").read_text()


def _daemon_pid(store: Path) -> int:
    return int((store / ".fsrep" / "lock").read_text().split()[2])


def _group_status(mountpoint: Path) -> dict:
    [group] = json.loads(run_fsrep("status", str(mountpoint), "--json").stdout)["groups"]
    return group


def _refusals(cluster: Cluster) -> int:
    return (cluster.secondary.store / ".fsrep" / "serve.log").read_text().count("held by a live session")


@pytest.mark.expect_log(HELD)
def test_a_second_primary_from_a_copied_store_is_refused_until_the_first_is_gone(cluster: Cluster,
                                                                                    tmp_path: Path) -> None:
    cluster.mount()
    (cluster.mnt / "a").write_text("before the copy")
    cluster.umount()
    copy, mnt2 = tmp_path / "copy", tmp_path / "mnt2"
    shutil.copytree(cluster.primary_store, copy, symlinks=True,
                    ignore=shutil.ignore_patterns("control.sock", "fsrep.log", "lock"))
    mnt2.mkdir()
    earlier = len(cluster.primary_log())
    cluster.mount()
    try:
        run_fsrep("mount", str(copy), str(mnt2), "--secondary", cluster.secondary.address,
                  "--key-file", str(cluster.key))
        wait_for(lambda: _refusals(cluster) >= 3, "the second primary to be refused three times")
        assert "held by a live session" in run_fsrep("status", str(mnt2)).stdout
        second = _group_status(mnt2)
        assert not second["connected"], second
        (cluster.mnt / "b").write_text("the first one keeps replicating")
        status = cluster.status()
        assert status["state"] == "InSync", status
        assert cluster.primary_log()[earlier:].count("connected to") == 1, "the first primary lost its session"
        assert (cluster.secondary.replica_root() / "b").read_text() == "the first one keeps replicating"

        os.kill(_daemon_pid(cluster.primary_store), signal.SIGKILL)
        wait_for(lambda: _group_status(mnt2)["connected"], "the second primary to get in once the first is gone",
                 timeout=DEADLINE)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt2)], capture_output=True)
        _wait_daemon_gone(copy)
