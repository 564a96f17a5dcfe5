"""Codec: every frame round-trips; bad bytes raise only RemoteProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import transport as tp
from transport._codec import MAX_FRAME
from transport._frames import FRAME_TYPES, Challenge, Proof

SAMPLES: list[tp.Frame] = [
    tp.Hello(group_id=b"g" * 16, nonce=b"n" * 32),
    Challenge(nonce=b"c" * 32, proof=b"p" * 32),
    Proof(proof=b"q" * 32),
    tp.Welcome(last_seq=7, fresh=1),
    tp.Write(seq=1, path=b"dir/file", offset=2**40, data=b"\x00\xffdata"),
    tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_MODE | tp.ATTR_TIMES, mode=0o4755, atime_ns=-5, mtime_ns=2**62),
    tp.Create(seq=3, path=b"f", mode=0o644, uid=1000, gid=1000),
    tp.MkNod(seq=4, path=b"fifo", mode=0o10644, rdev=0, uid=0, gid=0),
    tp.MkDir(seq=5, path=b"d", mode=0o2775, uid=1, gid=2),
    tp.Unlink(seq=6, path=b"f"),
    tp.RmDir(seq=7, path=b"d"),
    tp.Rename(seq=8, old=b"a", new=b"b/c", flags=tp.RENAME_NOREPLACE),
    tp.Link(seq=9, target=b"a", new=b"hard"),
    tp.Symlink(seq=10, path=b"s", target=b"/absolute/is/fine/as/a/target", uid=0, gid=0),
    tp.SetXattr(seq=11, path=b"", name=b"user.k", value=b"\x00v"),
    tp.RemoveXattr(seq=12, path=b"f", name=b"user.k"),
    tp.Fsync(seq=13, path=b"", whole=1),
    tp.Purge(seq=14),
    tp.Remove(seq=18, path=b"gone/tree"),
    tp.ListDir(seq=19, path=b"d", after=b"m"),
    tp.Listing(seq=19, more=1, entries=tp.encode_entries([tp.DirEntry(b"n", 0o100644, 1, 2, 3, -4, 1)])),
    tp.Ack(seq=15),
    tp.Nack(seq=16, errno=28, message="No space left on device ✓"),
    tp.Ping(token=1),
    tp.Pong(token=1),
    tp.Close(last_seq=17),
    tp.Error(message="bye"),
]


def _decode_all(data: bytes, chunk: int | None = None) -> list[tp.Frame]:
    decoder = tp.FrameDecoder()
    frames = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        decoder.receive_data(data[i:i + step])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    decoder.receive_data(b"")
    assert decoder.next_frame() is None
    return frames


def test_every_frame_type_has_a_sample() -> None:
    assert {type(f) for f in SAMPLES} == set(FRAME_TYPES.values())


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_frame_round_trips_whole_and_byte_by_byte(frame: tp.Frame) -> None:
    data = tp.encode(frame)
    assert _decode_all(data) == [frame]
    assert _decode_all(data, chunk=1) == [frame]


def test_many_frames_in_one_buffer_decode_in_order() -> None:
    data = b"".join(tp.encode(f) for f in SAMPLES)
    assert _decode_all(data, chunk=7) == SAMPLES


def test_trailing_partial_frame_waits_for_more_bytes() -> None:
    decoder = tp.FrameDecoder()
    ack = tp.encode(tp.Ack(seq=1))
    decoder.receive_data(ack + ack[:3])
    assert decoder.next_frame() == tp.Ack(seq=1)
    assert decoder.next_frame() is None
    decoder.receive_data(ack[3:])
    assert decoder.next_frame() == tp.Ack(seq=1)


@pytest.mark.parametrize("path", [b"/abs", b"../up", b"a/../b", b"./a", b"a//b", b"a/", b"a\0b", b"x" * 256,
                                  b"a/" * 2100])
def test_unsafe_paths_cannot_be_built(path: bytes) -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.Unlink(seq=1, path=path)


def test_listing_entries_round_trip_and_refuse_unsafe_names() -> None:
    entries = [tp.DirEntry(b"a", 0o40755, 0, 0, 4096, 1, 2), tp.DirEntry(b"\xff" * 255, 0o120777, 5, 6, 7, 8, 1)]
    assert tp.decode_entries(tp.encode_entries(entries)) == entries
    for bad in (b"..", b"a/b", b"", b"a\0"):
        with pytest.raises(tp.LocalProtocolError):
            tp.encode_entries([tp.DirEntry(bad, 0, 0, 0, 0, 0, 0)])
    with pytest.raises(tp.LocalProtocolError):
        tp.Listing(seq=1, more=0, entries=b"\x02..")
    with pytest.raises(tp.LocalProtocolError):
        tp.ListDir(seq=1, path=b"", after=b"x/y")


def test_out_of_range_values_cannot_be_built() -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.Ack(seq=-1)
    with pytest.raises(tp.LocalProtocolError):
        tp.Ack(seq=2**64)
    with pytest.raises(tp.LocalProtocolError):
        tp.Write(seq=1, path=b"f", offset=0, data=b"x" * (tp.MAX_DATA + 1))
    with pytest.raises(tp.LocalProtocolError):
        tp.SetAttr(seq=1, path=b"f", fields=0)
    with pytest.raises(tp.LocalProtocolError):
        tp.Rename(seq=1, old=b"a", new=b"b", flags=4)
    with pytest.raises(tp.LocalProtocolError):
        tp.Hello(group_id=b"short", nonce=b"n" * 32)


def _header(length: int, version: int = tp.PROTOCOL_VERSION, type_code: int = tp.Ack.TYPE) -> bytes:
    return struct.pack(">IBB", length, version, type_code)


@pytest.mark.parametrize("data, match", [
    (_header(10, type_code=99) + b"\0" * 8, "unknown"),
    (_header(10, version=9) + b"\0" * 8, "version"),
    (_header(MAX_FRAME + 1), "length"),
    (_header(1), "length"),
    (_header(11) + b"\0" * 9, "trailing|length|bytes"),
])
def test_malformed_frames_are_the_peers_error(data: bytes, match: str) -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(data)
    with pytest.raises(tp.RemoteProtocolError, match=match):
        decoder.next_frame()


def test_oversized_length_is_refused_before_the_body_is_buffered() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(_header(2**31))
    with pytest.raises(tp.RemoteProtocolError):
        decoder.next_frame()
    assert decoder.buffered <= 6


def test_stream_ending_inside_a_frame_is_an_error() -> None:
    decoder = tp.FrameDecoder()
    decoder.receive_data(tp.encode(tp.Ack(seq=1))[:-1])
    decoder.receive_data(b"")
    with pytest.raises(tp.RemoteProtocolError):
        decoder.next_frame()


def test_a_decoded_path_is_validated_like_a_built_one() -> None:
    good = tp.encode(tp.Unlink(seq=1, path=b"xx/f"))
    with pytest.raises(tp.RemoteProtocolError):
        _decode_all(good.replace(b"xx/f", b"../f"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_raise_only_the_protocol_error(data: bytes, chunk: int) -> None:
    try:
        _decode_all(data, chunk)
    except tp.RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SAMPLES), st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=200))
def test_corrupted_frames_raise_only_the_protocol_error(frame: tp.Frame, junk: bytes, at: int) -> None:
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

valid_frames = st.one_of(
    st.builds(tp.Write, seq=u64, path=paths, offset=u64, data=st.binary(max_size=5000)),
    st.builds(tp.SetAttr, seq=u64, path=paths, fields=st.integers(min_value=1, max_value=31), mode=u32, uid=u32,
              gid=u32, size=u64, atime_ns=i64, mtime_ns=i64),
    st.builds(tp.Rename, seq=u64, old=paths, new=paths, flags=st.integers(min_value=0, max_value=3)),
    st.builds(tp.Create, seq=u64, path=paths, mode=u32, uid=u32, gid=u32),
    st.builds(tp.Symlink, seq=u64, path=paths, target=st.binary(min_size=1, max_size=100).filter(
        lambda b: b"\0" not in b), uid=u32, gid=u32),
    st.builds(tp.SetXattr, seq=u64, path=paths, name=components, value=st.binary(max_size=300)),
    st.builds(tp.Ack, seq=u64),
    st.builds(tp.Nack, seq=u64, errno=u32, message=st.text(max_size=50)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(valid_frames, min_size=1, max_size=5), st.integers(min_value=1, max_value=300))
def test_valid_frames_round_trip(frames: list[tp.Frame], chunk: int) -> None:
    assert _decode_all(b"".join(tp.encode(f) for f in frames), chunk) == frames
