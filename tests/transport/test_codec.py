"""Codec: every frame round-trips; invalid frames cannot be built; bad bytes
raise only RemoteProtocolError."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import transport as tp
from transport._codec import HEADER_SIZE, LARGE_FRAME, MAX_FRAME
from transport._frames import FRAME_TYPES, MAX_NAME, MAX_PATH, MAX_TARGET, MAX_TEXT, MAX_XATTR_VALUE, Challenge, Proof

SAMPLES: list[tp.Frame] = [
    tp.Hello(group_id=b"g" * 16, nonce=b"n" * 32),
    Challenge(nonce=b"c" * 32, proof=b"p" * 32),
    Proof(proof=b"q" * 32),
    tp.Welcome(last_seq=7, fresh=1),
    tp.Write(seq=1, path=b"dir/file", offset=2**40, data=b"\x00\xffdata"),
    tp.Write(seq=1, path=b"dir/file", offset=0, data=b"d", mtime_ns=1_700_000_000_123_456_789),
    tp.WriteRuns.of(1, b"dir/file", [(0, b"ab"), (2**40, b"\x00\xff"), (8192, b"")]),
    tp.WriteRuns.of(1, b"dir/file", [(0, b"ab")], mtime_ns=-1),
    tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_MODE | tp.ATTR_TIMES, mode=0o4755, atime_ns=-5, mtime_ns=2**62),
    tp.Create(seq=3, path=b"f", mode=0o644, uid=1000, gid=1000),
    tp.Create(seq=3, path=b"d/f", mode=0o644, uid=1000, gid=1000, mtime_ns=5, parent_mtime_ns=6),
    tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_SIZE | tp.ATTR_MTIME, size=0, mtime_ns=2**62),
    tp.MkNod(seq=4, path=b"fifo", mode=0o10644, rdev=0, uid=0, gid=0),
    tp.MkDir(seq=5, path=b"d", mode=0o2775, uid=1, gid=2),
    tp.Unlink(seq=6, path=b"f"),
    tp.RmDir(seq=7, path=b"d"),
    tp.Rename(seq=8, old=b"a", new=b"b/c", flags=tp.RENAME_NOREPLACE),
    tp.Rename(seq=8, old=b"a", new=b"b/c", old_parent_mtime_ns=0, new_parent_mtime_ns=2**63 - 1),
    tp.Unlink(seq=6, path=b"d/f", parent_mtime_ns=7),
    tp.RmDir(seq=7, path=b"d", parent_mtime_ns=8),
    tp.Link(seq=9, target=b"a", new=b"d/hard", parent_mtime_ns=9),
    tp.MkDir(seq=5, path=b"d", mode=0o755, uid=0, gid=0, mtime_ns=10, parent_mtime_ns=11),
    tp.MkNod(seq=4, path=b"fifo", mode=0o10644, rdev=0, uid=0, gid=0, mtime_ns=12, parent_mtime_ns=13),
    tp.Symlink(seq=10, path=b"s", target=b"t", uid=0, gid=0, mtime_ns=14, parent_mtime_ns=15),
    tp.Link(seq=9, target=b"a", new=b"hard"),
    tp.Symlink(seq=10, path=b"s", target=b"/absolute/is/fine/as/a/target", uid=0, gid=0),
    tp.SetXattr(seq=11, path=b"", name=b"user.k", value=b"\x00v"),
    tp.RemoveXattr(seq=12, path=b"f", name=b"user.k"),
    tp.Fsync(seq=13, path=b"", whole=1),
    tp.Purge(seq=14),
    tp.Durable(seq=20),
    tp.Remove(seq=18, path=b"gone/tree"),
    tp.ListDir(seq=19, path=b"d", after=b"m"),
    tp.Listing(seq=19, more=1, entries=tp.encode_entries([tp.DirEntry(b"n", 0o100644, 1, 2, 3, -4, 1)])),
    tp.Checksum(seq=20, path=b"d/f", offset=8192, count=3),
    tp.Generation(seq=21, generation=bytes(range(16))),
    tp.KeepXattrs(seq=22, path=b"f", names=b"user.a\0trusted.b"),
    tp.Welcome(last_seq=7, fresh=0, generations=bytes(32)),
    tp.Digests(seq=20, digests=bytes(24)),
    tp.Punch(seq=23, path=b"sparse", runs=tp.pack_runs([(0, 4096), (2**40, 2**43)])),
    tp.Punch(seq=23, path=b"sparse", runs=tp.pack_runs([(0, 4096)]), mtime_ns=16),
    tp.ListData(seq=24, path=b"sparse", offset=0, length=2**62),
    tp.DataMap(seq=24, end=2**50, runs=tp.pack_runs([(4096, 8192), (2**44, 1)])),
    tp.Snapshot(seq=25, name="hourly-2026-12-02T05:00", created=1_796_000_000),
    tp.RetireSnapshot(seq=26, name="old"),
    tp.ResyncBegin(seq=28),
    tp.KeepDivergent(seq=29, name="s1"),
    tp.Adopt(seq=30, take=tp.ADOPT_TAKE, state=b'{"path": "vms/vm1"}'),
    tp.Adopted(seq=30, ok=0, message="the path is taken"),
    tp.Kept(seq=29, found=1, entries=3, data=2**40, where="/srv/replica/.fsrep/divergent/x/20261202T000000Z"),
    tp.SnapshotChanges(seq=27, name="s1", started=1, after=b"d/f"),
    tp.Fetch(seq=30, path=b"d/f", offset=2**40, length=tp.MAX_FETCH),
    tp.Clone(seq=33, src=b"vms/base.img", path=b"vms/vm7.img", mode=0o100640, uid=1, gid=2, mtime_ns=3,
             parent_mtime_ns=-4),
    tp.Clone(seq=34, src=b"base.img", path=b"vm8.img", mode=0o100600, uid=0, gid=0, flags=tp.CLONE_REPLAY),
    tp.Fetched(seq=30, found=1, mode=0o100644, uid=1, gid=2, rdev=0, size=2**40 + 3, atime_ns=-5, mtime_ns=6,
               xattrs=tp.pack_xattrs([(b"user.a", b"\x00v"), (b"trusted.b", b"")]), data=b"abc"),
    tp.Fetched(seq=31, found=1, mode=0o120777, target=b"../t"),
    tp.Fetched(seq=32, found=0),
    tp.Changes(seq=27, found=1, more=1, entries=tp.encode_changes([(b"", tp.CHANGE_DIR, []),
                                                                   (b"d/f", tp.CHANGE_META, [(0, 3), (2**51, 1)])])),
    tp.Welcome(last_seq=7, fresh=0, snapshots=tp.pack_snapshots([("s1", 5), ("auto-x", 2**63)])),
    tp.DataMap(seq=24, end=2**62, runs=b""),
    tp.Ack(seq=15),
    tp.Nack(seq=16, errno=28, message="No space left on device ✓"),
    tp.Ping(token=1),
    tp.Pong(token=1),
    tp.Close(last_seq=17),
    tp.Error(message="bye"),
]
IDS = [type(f).__name__ for f in SAMPLES]


def _decode_all(data: bytes, chunk: int | None = None) -> list[tp.Frame]:
    """Feed *data* in chunks of *chunk* bytes, then end the stream."""
    step = chunk or max(1, len(data))
    return _decode_chunks([data[i:i + step] for i in range(0, len(data), step)])


def _decode_chunks(chunks: list[bytes]) -> list[tp.Frame]:
    decoder = tp.FrameDecoder()
    frames = []
    for piece in chunks:
        if not piece:
            continue  # b"" would mean end of stream
        decoder.receive_data(piece)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    decoder.receive_data(b"")
    assert decoder.next_frame() is None
    return frames


def _header(length: int, version: int = tp.PROTOCOL_VERSION, type_code: int = tp.Ack.TYPE) -> bytes:
    return struct.pack(">IBB", length, version, type_code)


# --- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("blob", [
    tp.encode_changes([(b"f", 8, [])]),  # an unknown flag
    tp.encode_changes([(b"f", 1, [(2**52, 1)])]),  # past the last region
    tp.encode_changes([(b"f", 1, [(0, 1)])])[:-3],  # cut short
    tp.encode_changes([(b"f", 1, [])]).replace(b"f", b"/"),  # an absolute path
])
def test_malformed_changes_cannot_be_built(blob: bytes) -> None:
    with pytest.raises(tp.ProtocolError):
        tp.Changes(seq=1, found=1, more=0, entries=blob)


@pytest.mark.parametrize("blob", [
    tp.pack_xattrs([(b"user.a", b"v")])[:-1],  # cut short
    struct.pack(">BI", 0, 0),  # no name
    struct.pack(">BI", 3, 0) + b"a\0b",  # a NUL in the name
    struct.pack(">BI", 1, 2**20) + b"a" + bytes(2**20),  # a value over 64 KiB
])
def test_malformed_extended_attributes_cannot_be_built(blob: bytes) -> None:
    with pytest.raises(tp.ProtocolError):
        tp.Fetched(seq=1, found=1, xattrs=blob)


def test_a_fetch_asks_for_at_most_a_megabyte() -> None:
    with pytest.raises(tp.ProtocolError):
        tp.Fetch(seq=1, path=b"f", length=tp.MAX_FETCH + 1)
    with pytest.raises(tp.ProtocolError):
        tp.Fetched(seq=1, found=1, data=bytes(tp.MAX_FETCH + 1))


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "caf\u00e9", "tab\there"])
def test_snapshot_names_are_short_printable_ascii(name: str) -> None:
    with pytest.raises(tp.ProtocolError):
        tp.Snapshot(seq=1, name=name)
    with pytest.raises(tp.ProtocolError):
        tp.pack_snapshots([(name, 1)])


def test_every_frame_type_has_a_sample() -> None:
    assert {type(f) for f in SAMPLES} == set(FRAME_TYPES.values())


@pytest.mark.parametrize("frame", SAMPLES, ids=IDS)
def test_frame_round_trips_decoded_whole(frame: tp.Frame) -> None:
    assert _decode_all(tp.encode(frame)) == [frame]


@pytest.mark.parametrize("frame", SAMPLES, ids=IDS)
def test_frame_round_trips_decoded_byte_by_byte(frame: tp.Frame) -> None:
    data = tp.encode(frame)
    decoder = tp.FrameDecoder()
    for i in range(len(data) - 1):
        decoder.receive_data(data[i:i + 1])
        assert decoder.next_frame() is None, f"frame decoded after only {i + 1} of {len(data)} bytes"
    decoder.receive_data(data[-1:])
    assert decoder.next_frame() == frame
    assert decoder.next_frame() is None


@pytest.mark.parametrize("frame", SAMPLES, ids=IDS)
def test_frame_round_trips_with_trailing_bytes_left_buffered(frame: tp.Frame) -> None:
    data = tp.encode(frame)
    trailing = tp.encode(tp.Ping(token=9))[:5]
    decoder = tp.FrameDecoder()
    decoder.receive_data(data + trailing)
    assert decoder.next_frame() == frame
    assert decoder.next_frame() is None
    assert decoder.buffered == len(trailing)


@pytest.mark.parametrize("frame", SAMPLES, ids=IDS)
def test_encode_parts_joins_to_encode(frame: tp.Frame) -> None:
    from transport._codec import encode_parts
    assert b"".join(encode_parts(frame)) == tp.encode(frame)


def test_wire_header_is_length_version_type() -> None:
    data = tp.encode(tp.Ack(seq=5))
    assert data == _header(2 + 8) + (5).to_bytes(8, "big")


def test_many_frames_in_one_buffer_decode_in_order() -> None:
    data = b"".join(tp.encode(f) for f in SAMPLES)
    assert _decode_all(data, chunk=7) == SAMPLES
    assert _decode_all(data) == SAMPLES


def test_trailing_partial_frame_waits_for_more_bytes() -> None:
    decoder = tp.FrameDecoder()
    ack = tp.encode(tp.Ack(seq=1))
    decoder.receive_data(ack + ack[:3])
    assert decoder.next_frame() == tp.Ack(seq=1)
    assert decoder.next_frame() is None
    decoder.receive_data(ack[3:])
    assert decoder.next_frame() == tp.Ack(seq=1)


def test_largest_write_round_trips() -> None:
    frame = tp.Write(seq=1, path=b"/".join([b"x" * MAX_NAME] * 16), offset=2**63,
                     data=bytes(range(256)) * (tp.MAX_DATA // 256))
    assert len(frame.path) <= MAX_PATH
    assert _decode_all(tp.encode(frame), chunk=1 << 20) == [frame]


def test_text_round_trips_as_utf8() -> None:
    frame = tp.Nack(seq=1, errno=2, message="é" * (MAX_TEXT // 2))
    assert _decode_all(tp.encode(frame)) == [frame]


# --- frames validate themselves when built ------------------------------------------


BAD_PATHS = [
    b"/abs", b"/", b"../up", b"..", b".", b"a/../b", b"a/..", b"./a", b"a/./b", b"a//b", b"a/", b"a\0b", b"\0",
    b"x" * (MAX_NAME + 1), b"ok/" + b"x" * (MAX_NAME + 1), b"ab/" * (MAX_PATH // 3 + 1) + b"ab",
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_unsafe_paths_cannot_be_built(path: bytes) -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.Unlink(seq=1, path=path)


PATH_FIELDS = [
    lambda p: tp.Write(seq=1, path=p, offset=0, data=b""),
    lambda p: tp.SetAttr(seq=1, path=p, fields=tp.ATTR_MODE),
    lambda p: tp.Create(seq=1, path=p, mode=0o644, uid=0, gid=0),
    lambda p: tp.MkNod(seq=1, path=p, mode=0o10644, rdev=0, uid=0, gid=0),
    lambda p: tp.MkDir(seq=1, path=p, mode=0o755, uid=0, gid=0),
    lambda p: tp.RmDir(seq=1, path=p),
    lambda p: tp.Rename(seq=1, old=p, new=b"ok"),
    lambda p: tp.Rename(seq=1, old=b"ok", new=p),
    lambda p: tp.Link(seq=1, target=p, new=b"ok"),
    lambda p: tp.Link(seq=1, target=b"ok", new=p),
    lambda p: tp.Symlink(seq=1, path=p, target=b"t", uid=0, gid=0),
    lambda p: tp.SetXattr(seq=1, path=p, name=b"user.a", value=b""),
    lambda p: tp.RemoveXattr(seq=1, path=p, name=b"user.a"),
    lambda p: tp.Fsync(seq=1, path=p),
    lambda p: tp.Remove(seq=1, path=p),
    lambda p: tp.ListDir(seq=1, path=p),
    lambda p: tp.Checksum(seq=1, path=p, offset=0, count=1),
    lambda p: tp.KeepXattrs(seq=1, path=p, names=b""),
]
PATH_FIELD_IDS = ["Write", "SetAttr", "Create", "MkNod", "MkDir", "RmDir", "Rename.old", "Rename.new", "Link.target",
                  "Link.new", "Symlink", "SetXattr", "RemoveXattr", "Fsync", "Remove", "ListDir",
                  "Checksum", "KeepXattrs"]


@pytest.mark.parametrize("build", PATH_FIELDS, ids=PATH_FIELD_IDS)
@pytest.mark.parametrize("path", [b"../escape", b"/etc/passwd", b"a/./b", b"a\0"])
def test_every_path_field_is_checked(build, path: bytes) -> None:
    with pytest.raises(tp.LocalProtocolError):
        build(path)


def test_longest_valid_path_can_be_built() -> None:
    path = b"ab/" * (MAX_PATH // 3) + b"a" * (MAX_PATH % 3)
    assert len(path) == MAX_PATH
    tp.Unlink(seq=1, path=path)


@pytest.mark.parametrize(("path", "code"), [
    (b"n" * (MAX_NAME + 1), errno.ENAMETOOLONG),
    (b"d/" + b"n" * (MAX_NAME + 1), errno.ENAMETOOLONG),
    (b"a/" * (MAX_PATH // 2) + b"a", errno.ENAMETOOLONG),
    (b"a//b", errno.EINVAL),
    (b"a\0b", errno.EINVAL),
])
def test_unnameable_paths_carry_the_errno_the_kernel_would_give(path: bytes, code: int) -> None:
    with pytest.raises(OSError) as raised:
        tp.Unlink(seq=1, path=path)
    assert raised.value.errno == code
    assert isinstance(raised.value, tp.LocalProtocolError)


def test_paths_must_be_bytes() -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.Unlink(seq=1, path="str")  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [
    pytest.param(lambda: tp.Ack(seq=-1), id="u64-negative"),
    pytest.param(lambda: tp.Ack(seq=2**64), id="u64-too-big"),
    pytest.param(lambda: tp.Ack(seq=True), id="u64-bool"),
    pytest.param(lambda: tp.Ack(seq=1.0), id="u64-float"),
    pytest.param(lambda: tp.Welcome(last_seq=0, fresh=256), id="u8-too-big"),
    pytest.param(lambda: tp.Create(seq=1, path=b"f", mode=2**32, uid=0, gid=0), id="u32-too-big"),
    pytest.param(lambda: tp.Create(seq=1, path=b"f", mode=0, uid=-1, gid=0), id="u32-negative"),
    pytest.param(lambda: tp.MkNod(seq=1, path=b"f", mode=0, rdev=2**64, uid=0, gid=0), id="rdev-too-big"),
    pytest.param(lambda: tp.SetAttr(seq=1, path=b"f", fields=tp.ATTR_TIMES, atime_ns=2**63), id="i64-too-big"),
    pytest.param(lambda: tp.SetAttr(seq=1, path=b"f", fields=tp.ATTR_TIMES, mtime_ns=-(2**63) - 1),
                 id="i64-too-small"),
    pytest.param(lambda: tp.SetAttr(seq=1, path=b"f", fields=0), id="setattr-no-fields"),
    pytest.param(lambda: tp.SetAttr(seq=1, path=b"f", fields=64), id="setattr-unknown-field"),
    pytest.param(lambda: tp.SetAttr(seq=1, path=b"f", fields=tp.ATTR_TIMES | tp.ATTR_MTIME),
                 id="setattr-times-and-mtime"),
    pytest.param(lambda: tp.Write(seq=1, path=b"f", offset=0, data=b"", mtime_ns=2**63), id="write-mtime-too-big"),
    pytest.param(lambda: tp.Rename(seq=1, old=b"a", new=b"b", new_parent_mtime_ns=-(2**63) - 1),
                 id="rename-mtime-too-small"),
    pytest.param(lambda: tp.Rename(seq=1, old=b"a", new=b"b", flags=4), id="rename-unknown-flag"),
    pytest.param(lambda: tp.Fsync(seq=1, path=b"", whole=256), id="fsync-whole-too-big"),
])
def test_out_of_range_integers_cannot_be_built(build) -> None:
    with pytest.raises(tp.LocalProtocolError):
        build()


def test_integer_limits_themselves_can_be_built() -> None:
    tp.Ack(seq=2**64 - 1)
    tp.Welcome(last_seq=0, fresh=255)
    tp.Create(seq=0, path=b"f", mode=2**32 - 1, uid=2**32 - 1, gid=2**32 - 1)
    tp.SetAttr(seq=1, path=b"f", fields=31, atime_ns=-(2**63), mtime_ns=2**63 - 1)


def test_data_over_max_data_cannot_be_built() -> None:
    tp.Write(seq=1, path=b"f", offset=0, data=b"x" * tp.MAX_DATA)
    with pytest.raises(tp.LocalProtocolError):
        tp.Write(seq=1, path=b"f", offset=0, data=b"x" * (tp.MAX_DATA + 1))
    with pytest.raises(tp.LocalProtocolError):
        tp.Write(seq=1, path=b"f", offset=0, data="text")  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [
    pytest.param(lambda: tp.SetXattr(seq=1, path=b"f", name=b"user.a", value=b"x" * (MAX_XATTR_VALUE + 1)),
                 id="xattr-value-too-long"),
    pytest.param(lambda: tp.SetXattr(seq=1, path=b"f", name=b"", value=b""), id="xattr-name-empty"),
    pytest.param(lambda: tp.SetXattr(seq=1, path=b"f", name=b"user.\0", value=b""), id="xattr-name-nul"),
    pytest.param(lambda: tp.RemoveXattr(seq=1, path=b"f", name=b"u" * (MAX_NAME + 1)), id="xattr-name-too-long"),
    pytest.param(lambda: tp.Symlink(seq=1, path=b"s", target=b"", uid=0, gid=0), id="symlink-target-empty"),
    pytest.param(lambda: tp.Symlink(seq=1, path=b"s", target=b"a\0b", uid=0, gid=0), id="symlink-target-nul"),
    pytest.param(lambda: tp.Symlink(seq=1, path=b"s", target=b"t" * (MAX_TARGET + 1), uid=0, gid=0),
                 id="symlink-target-too-long"),
    pytest.param(lambda: tp.Remove(seq=1, path=b""), id="remove-root"),
    pytest.param(lambda: tp.ListDir(seq=1, path=b"", after=b"x/y"), id="listdir-after-two-components"),
    pytest.param(lambda: tp.ListDir(seq=1, path=b"", after=b".."), id="listdir-after-dotdot"),
    pytest.param(lambda: tp.Listing(seq=1, more=0, entries=b"\x02.."), id="listing-dotdot"),
    pytest.param(lambda: tp.Listing(seq=1, more=0, entries=b"\x01a\x00"), id="listing-truncated"),
    pytest.param(lambda: tp.Checksum(seq=1, path=b"f", offset=0, count=0), id="checksum-no-regions"),
    pytest.param(lambda: tp.Checksum(seq=1, path=b"f", offset=0, count=tp.MAX_CHECKSUM_REGIONS + 1),
                 id="checksum-too-many-regions"),
    pytest.param(lambda: tp.Digests(seq=1, digests=b"1234567"), id="digests-partial"),
    pytest.param(lambda: tp.WriteRuns(seq=1, path=b"f", runs=b"", data=b""), id="writeruns-no-runs"),
    pytest.param(lambda: tp.WriteRuns(seq=1, path=b"f", runs=bytes(15), data=b""), id="writeruns-partial-run"),
    pytest.param(lambda: tp.WriteRuns.of(1, b"f", [(0, b"x")] * (tp.MAX_RUNS + 1)), id="writeruns-too-many-runs"),
    pytest.param(lambda: tp.WriteRuns(seq=1, path=b"f", runs=struct.pack(">QQ", 0, 2), data=b"x"),
                 id="writeruns-data-short"),
    pytest.param(lambda: tp.WriteRuns(seq=1, path=b"f", runs=struct.pack(">QQ", 0, 1), data=b"xy"),
                 id="writeruns-data-long"),
    pytest.param(lambda: tp.WriteRuns(seq=1, path=b"f", runs=struct.pack(">QQ", 2**64 - 1, 1), data=b"x"),
                 id="writeruns-past-the-largest-offset"),
    pytest.param(lambda: tp.Welcome(last_seq=1, fresh=0, generations=bytes(17)), id="welcome-partial-generation"),
    pytest.param(lambda: tp.Generation(seq=1, generation=bytes(15)), id="generation-short"),
    pytest.param(lambda: tp.KeepXattrs(seq=1, path=b"f", names=b"user.a\0\0user.b"), id="keepxattrs-empty-name"),
    pytest.param(lambda: tp.Hello(group_id=b"short", nonce=b"n" * 32), id="group-id-short"),
    pytest.param(lambda: tp.Hello(group_id=b"g" * 16, nonce=b"n" * 33), id="nonce-long"),
    pytest.param(lambda: Proof(proof=b"p" * 31), id="proof-short"),
    pytest.param(lambda: tp.Error(message="x" * (MAX_TEXT + 1)), id="text-too-long"),
    pytest.param(lambda: tp.Error(message="é" * (MAX_TEXT // 2 + 1)), id="text-too-long-in-utf8"),
    pytest.param(lambda: tp.Error(message=b"bytes"), id="text-bytes"),
    pytest.param(lambda: tp.Nack(seq=1, errno=1, message="\ud800"), id="text-lone-surrogate"),
])
def test_invalid_field_values_cannot_be_built(build) -> None:
    with pytest.raises(tp.LocalProtocolError):
        build()


def test_frames_are_frozen() -> None:
    frame = tp.Ack(seq=1)
    with pytest.raises(AttributeError):
        frame.seq = 2  # type: ignore[misc]


def test_listing_entries_round_trip_and_refuse_unsafe_names() -> None:
    entries = [tp.DirEntry(b"a", 0o40755, 0, 0, 4096, 1, 2), tp.DirEntry(b"\xff" * 255, 0o120777, 5, 6, 7, 8, 1)]
    assert tp.decode_entries(tp.encode_entries(entries)) == entries
    assert tp.Listing(seq=1, more=0, entries=tp.encode_entries(entries)).items() == entries
    for bad in (b"..", b".", b"a/b", b"", b"a\0"):
        with pytest.raises(tp.LocalProtocolError):
            tp.encode_entries([tp.DirEntry(bad, 0, 0, 0, 0, 0, 0)])


# --- the decoder refuses bad bytes as the peer's error ----------------------------


@pytest.mark.parametrize(("data", "match"), [
    (_header(10, type_code=99) + b"\0" * 8, "unknown frame type 99"),
    (_header(10, type_code=0) + b"\0" * 8, "unknown frame type 0"),
    (_header(10, version=tp.PROTOCOL_VERSION + 1) + b"\0" * 8, f"version {tp.PROTOCOL_VERSION + 1}"),
    (_header(10, version=0) + b"\0" * 8, "version 0"),
    (_header(MAX_FRAME + 1), "length"),
    (_header(1), "length"),
    (_header(0), "length"),
    (_header(11) + b"\0" * 9, "trailing"),
    (_header(9) + b"\0" * 7, "truncated"),
    (_header(2), "truncated"),
], ids=["unknown-type", "type-zero", "future-version", "version-zero", "oversized", "length-1", "length-0",
        "trailing-body-bytes", "short-body", "empty-body"])
def test_malformed_frames_are_the_peers_error(data: bytes, match: str) -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(data)
    with pytest.raises(tp.RemoteProtocolError, match=match):
        decoder.next_frame()


def test_decoder_rejects_wrong_version_from_the_header_alone() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(_header(1000, version=tp.PROTOCOL_VERSION + 1))
    with pytest.raises(tp.RemoteProtocolError, match="version"):
        decoder.next_frame()


def test_a_tls_client_hello_is_named_as_such() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(bytes.fromhex("16030105f8010005f40303") + bytes(100))  # a ClientHello's first bytes
    with pytest.raises(tp.RemoteProtocolError, match="TLS handshake"):
        decoder.next_frame()


def test_decoder_rejects_oversized_frame_before_buffering_the_body() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(_header(2**32 - 1))
    with pytest.raises(tp.RemoteProtocolError, match="length"):
        decoder.next_frame()
    assert decoder.buffered == HEADER_SIZE


def test_decoder_accepts_a_length_of_exactly_max_frame_without_waiting_for_more() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(_header(MAX_FRAME, type_code=tp.Write.TYPE))
    assert decoder.next_frame() is None  # waits: the length is allowed


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_stream_ending_inside_a_frame_is_an_error(cut: int) -> None:
    data = tp.encode(tp.Ack(seq=1))
    assert cut < len(data)
    decoder = tp.FrameDecoder()
    decoder.receive_data(data[:cut])
    assert decoder.next_frame() is None
    decoder.receive_data(b"")
    with pytest.raises(tp.RemoteProtocolError, match="ended"):
        decoder.next_frame()


def test_stream_ending_between_frames_is_clean() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(tp.encode(tp.Ack(seq=1)))
    decoder.receive_data(b"")
    assert decoder.next_frame() == tp.Ack(seq=1)
    assert decoder.next_frame() is None


def test_data_after_end_of_stream_is_our_bug() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(b"")
    with pytest.raises(tp.LocalProtocolError):
        decoder.receive_data(b"x")


def test_a_decoded_path_is_validated_like_a_built_one() -> None:
    good = tp.encode(tp.Unlink(seq=1, path=b"xx/f"))
    with pytest.raises(tp.RemoteProtocolError, match="invalid Unlink"):
        _decode_all(good.replace(b"xx/f", b"../f"))


def test_a_decoded_value_out_of_range_is_the_peers_error() -> None:
    raw = bytearray(tp.encode(tp.SetAttr(seq=1, path=b"f", fields=tp.ATTR_MODE)))
    fields_at = HEADER_SIZE + 8 + 2 + 1
    raw[fields_at:fields_at + 4] = (0).to_bytes(4, "big")
    with pytest.raises(tp.RemoteProtocolError, match="SetAttr"):
        _decode_all(bytes(raw))


def test_decoded_text_that_is_not_utf8_is_the_peers_error() -> None:
    raw = tp.encode(tp.Error(message="ab")).replace(b"ab", b"\xff\xfe")
    with pytest.raises(tp.RemoteProtocolError, match="UTF-8"):
        _decode_all(raw)


def test_decoder_error_leaves_the_buffer_resizable() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(tp.encode(tp.Unlink(seq=1, path=b"xx/f")).replace(b"xx/f", b"../f"))
    with pytest.raises(tp.RemoteProtocolError) as caught:
        decoder.next_frame()
    assert caught.value is not None  # the error (and its traceback) is still alive here
    decoder.receive_data(b"more bytes")  # must not fail with BufferError
    assert decoder.buffered > 0


def test_a_long_stream_does_not_keep_consumed_bytes() -> None:
    decoder = tp.FrameDecoder()
    frame = tp.Write(seq=1, path=b"f", offset=0, data=b"x" * 1000)
    data = tp.encode(frame)
    for _ in range(200):
        decoder.receive_data(data)
        assert decoder.next_frame() == frame
    assert len(decoder._buf) <= 2 * len(data)


def _large_write(seq: int = 1) -> tp.Write:
    return tp.Write(seq=seq, path=b"d/f", offset=4096, data=bytes(range(256)) * (LARGE_FRAME // 256 + 7))


def test_a_large_frame_received_in_place_decodes_its_data_as_a_view_of_its_own_buffer() -> None:
    """recv_into the receive buffer: the data is not copied, and bytes
    received after it (the next frame) never change it."""
    frame, after = _large_write(), tp.Unlink(seq=2, path=b"g")
    wire = tp.encode(frame) + tp.encode(after)
    decoder = tp.FrameDecoder()
    decoder.receive_data(wire[:100])
    assert decoder.next_frame() is None
    pos = 100
    while (into := decoder.receive_buffer()) is not None:
        count = min(len(into), 5000)
        into[:count] = wire[pos:pos + count]
        decoder.received(count)
        pos += count
    assert pos == len(tp.encode(frame))
    got = decoder.next_frame()
    assert isinstance(got, tp.Write)
    assert isinstance(got.data, memoryview)
    assert got == frame
    decoder.receive_data(wire[pos:])
    assert decoder.next_frame() == after
    assert bytes(got.data) == frame.data
    assert decoder.buffered == 0


def test_a_large_frame_fed_with_receive_data_keeps_what_follows_it() -> None:
    frames = [_large_write(1), tp.Unlink(seq=2, path=b"g"), _large_write(3)]
    wire = b"".join(tp.encode(f) for f in frames)
    decoder = tp.FrameDecoder()
    got: list[tp.Frame] = []
    for start in range(0, len(wire), 7000):
        decoder.receive_data(wire[start:start + 7000])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == frames
    assert decoder.buffered == 0


def test_received_more_than_the_receive_buffer_is_our_bug() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(tp.encode(_large_write())[:10])
    decoder.next_frame()
    into = decoder.receive_buffer()
    assert into is not None
    with pytest.raises(tp.LocalProtocolError):
        decoder.received(len(into) + 1)


def test_stream_ending_inside_a_large_frame_is_an_error() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(tp.encode(_large_write())[:-1])
    assert decoder.next_frame() is None
    decoder.receive_data(b"")
    assert decoder.receive_buffer() is None
    with pytest.raises(tp.RemoteProtocolError, match="ended inside"):
        decoder.next_frame()


def test_a_large_frame_other_than_write_decodes_its_blobs_as_bytes() -> None:
    frame = tp.SetXattr(seq=1, path=b"f", name=b"user.big", value=b"v" * MAX_XATTR_VALUE)
    wire = tp.encode(frame)
    assert len(wire) >= LARGE_FRAME
    decoder = tp.FrameDecoder()
    decoder.receive_data(wire[:50])
    decoder.next_frame()
    decoder.receive_data(wire[50:])
    got = decoder.next_frame()
    assert got == frame
    assert isinstance(got.value, bytes)


# --- properties ---------------------------------------------------------------------


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0, max_value=4096), max_size=20))
def test_arbitrary_bytes_raise_only_the_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    try:
        _decode_chunks(_chunked(data, cuts))
    except tp.RemoteProtocolError:
        pass


valid_headers = st.builds(
    lambda length, type_code, body: _header(length, tp.PROTOCOL_VERSION, type_code) + body,
    st.integers(min_value=2, max_value=300), st.sampled_from(sorted(FRAME_TYPES)), st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(valid_headers, st.lists(st.integers(min_value=0, max_value=1024), max_size=10))
def test_plausible_headers_with_arbitrary_bodies_raise_only_the_remote_protocol_error(
        data: bytes, cuts: list[int]) -> None:
    try:
        _decode_chunks(_chunked(data, cuts))
    except tp.RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=200))
def test_corrupted_frames_raise_only_the_remote_protocol_error(frame: tp.Frame, junk: bytes, at: int) -> None:
    data = bytearray(tp.encode(frame))
    at = min(at, len(data))
    data[at:at + len(junk)] = junk
    try:
        _decode_all(bytes(data), 5)
    except tp.RemoteProtocolError:
        pass


components = st.binary(min_size=1, max_size=20).filter(lambda b: b"/" not in b and b"\0" not in b
                                                         and b not in (b".", b".."))
paths = st.lists(components, min_size=1, max_size=5).map(b"/".join)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
entries = st.lists(st.builds(tp.DirEntry, name=components, mode=u32, uid=u32, gid=u32, size=u64, mtime_ns=i64,
                             nlink=u32), max_size=5)

valid_frames = st.one_of(
    st.builds(tp.Write, seq=u64, path=paths, offset=u64, data=st.binary(max_size=5000), mtime_ns=i64),
    st.builds(tp.WriteRuns.of, u64, paths, st.lists(st.tuples(st.integers(0, 2**63), st.binary(max_size=300)),
                                                    min_size=1, max_size=20)),
    st.builds(tp.SetAttr, seq=u64, path=paths, fields=st.integers(min_value=1, max_value=63).filter(
        lambda f: not (f & tp.ATTR_TIMES and f & tp.ATTR_MTIME)), mode=u32, uid=u32, gid=u32, size=u64,
        atime_ns=i64, mtime_ns=i64),
    st.builds(tp.Rename, seq=u64, old=paths, new=paths, flags=st.integers(min_value=0, max_value=3),
              old_parent_mtime_ns=i64, new_parent_mtime_ns=i64),
    st.builds(tp.Create, seq=u64, path=paths, mode=u32, uid=u32, gid=u32, mtime_ns=i64, parent_mtime_ns=i64),
    st.builds(tp.MkDir, seq=u64, path=paths | st.just(b""), mode=u32, uid=u32, gid=u32, mtime_ns=i64,
              parent_mtime_ns=i64),
    st.builds(tp.Link, seq=u64, target=paths, new=paths, parent_mtime_ns=i64),
    st.builds(tp.Unlink, seq=u64, path=paths, parent_mtime_ns=i64),
    st.builds(tp.Symlink, seq=u64, path=paths, target=st.binary(min_size=1, max_size=100).filter(
        lambda b: b"\0" not in b), uid=u32, gid=u32),
    st.builds(tp.SetXattr, seq=u64, path=paths, name=st.binary(min_size=1, max_size=MAX_NAME).filter(
        lambda b: b"\0" not in b), value=st.binary(max_size=300)),
    st.builds(tp.Listing, seq=u64, more=st.integers(0, 255), entries=entries.map(tp.encode_entries)),
    st.builds(tp.Checksum, seq=u64, path=paths, offset=u64, count=st.integers(1, tp.MAX_CHECKSUM_REGIONS)),
    st.builds(tp.Digests, seq=u64, digests=st.binary(max_size=80).map(lambda b: b[:len(b) // 8 * 8])),
    st.builds(tp.Ack, seq=u64),
    st.builds(tp.Nack, seq=u64, errno=u32, message=st.text(max_size=50)),
    st.builds(tp.Error, message=st.text(max_size=200)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_frames, min_size=1, max_size=5), st.lists(st.integers(min_value=0, max_value=30000),
                                                               max_size=10))
def test_generated_valid_frames_round_trip(frames: list[tp.Frame], cuts: list[int]) -> None:
    data = b"".join(tp.encode(f) for f in frames)
    assert _decode_chunks(_chunked(data, cuts)) == frames


@pytest.mark.parametrize("runs", [[], [(0, 0)], [(10, 5), (12, 5)], [(20, 1), (0, 1)], [(2**64 - 2, 5)]])
def test_punch_runs_must_be_nonempty_ordered_and_apart(runs: list[tuple[int, int]]) -> None:
    blob = b"".join(struct.pack(">QQ", offset, length) for offset, length in runs)
    with pytest.raises(tp.LocalProtocolError):
        tp.Punch(seq=1, path=b"f", runs=blob)


def test_a_data_map_cannot_reach_past_its_end() -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.DataMap(seq=1, end=100, runs=tp.pack_runs([(50, 51)]))


def test_namespace_frames_name_the_mtimes_they_carry_and_of_which_entry() -> None:
    assert tp.Create(seq=1, path=b"d/f", mode=0, uid=0, gid=0, mtime_ns=5, parent_mtime_ns=6).mtimes() == \
        [(b"d/f", 5), (b"d", 6)]
    assert tp.Rename(seq=1, old=b"a/x", new=b"y", old_parent_mtime_ns=7, new_parent_mtime_ns=8).mtimes() == \
        [(b"a", 7), (b"", 8)]
    assert tp.Link(seq=1, target=b"a/x", new=b"b/y", parent_mtime_ns=-9).mtimes() == [(b"b", -9)]
    assert tp.Unlink(seq=1, path=b"f", parent_mtime_ns=0).mtimes() == [(b"", 0)]  # the epoch is a time
    # Unset times (resync frames, whose times follow separately) are not set at all.
    assert tp.MkDir(seq=1, path=b"d", mode=0, uid=0, gid=0, parent_mtime_ns=3).mtimes() == [(b"", 3)]
    assert tp.RmDir(seq=1, path=b"d").mtimes() == []
    assert tp.SetXattr(seq=1, path=b"f", name=b"user.a", value=b"").mtimes() == []  # ctime only
