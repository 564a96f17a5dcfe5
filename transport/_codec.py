"""Sans-IO frame codec: bytes in, frames out; frames in, bytes out.

Wire format of a frame::

    u32 length   bytes that follow (version + type + body), big endian
    u8  version  PROTOCOL_VERSION
    u8  type     a key of FRAME_TYPES
    body         the frame's FIELDS in order: integers big endian; path and
                 text as u16 length + bytes; name as u8 length + bytes;
                 blob as u32 length + bytes; nonce/proof/group id fixed size

Caveats:
- The length is checked against the decoder's ``max_frame`` (MAX_FRAME
  unless the caller set less, as the session does until its handshake is
  done) before any of the body is buffered, so a peer cannot make us hold
  more than one frame's worth.
- Nothing but RemoteProtocolError leaves the decoder, whatever the bytes.
- A frame of ``LARGE_FRAME`` bytes or more is gathered in a buffer of its
  own, which the caller may receive into directly (``receive_buffer``); the
  frame's ``VIEWS`` fields (file data) are then views of that buffer, not
  copies. The buffer belongs to that frame alone, so nothing else received
  ever changes them.
"""

from __future__ import annotations

import struct

from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import (
    BLOB,
    FRAME_TYPES,
    GROUP_ID,
    GROUP_ID_SIZE,
    I64,
    MAX_DATA,
    MAX_PATH,
    MAX_RUNS,
    NAME,
    NONCE,
    NONCE_SIZE,
    PATH,
    PROOF,
    PROOF_SIZE,
    PROTOCOL_VERSION,
    RUN_SIZE,
    TEXT,
    U8,
    U32,
    U64,
    Frame,
)

_HEADER = struct.Struct(">IBB")
HEADER_SIZE = _HEADER.size
MAX_FRAME = MAX_DATA + MAX_PATH + MAX_RUNS * RUN_SIZE + 1024
_INTS = {U8: struct.Struct(">B"), U32: struct.Struct(">I"), U64: struct.Struct(">Q"), I64: struct.Struct(">q")}
_LEN16 = struct.Struct(">H")
_LEN32 = struct.Struct(">I")
_FIXED = {NONCE: NONCE_SIZE, PROOF: PROOF_SIZE, GROUP_ID: GROUP_ID_SIZE}
LARGE_FRAME = 64 * 1024
_TLS_HANDSHAKE_RECORD = 0x1603  # the first two bytes of a TLS ClientHello: never a frame length that fits


def encode(frame: Frame) -> bytes:
    """Return the wire bytes of *frame* (which validated itself when built)."""
    return b"".join(encode_parts(frame))


def encode_parts(frame: Frame) -> list[bytes]:
    """The wire bytes of *frame* as a list of pieces, so a large payload is
    sent as it is instead of being copied into one buffer."""
    parts: list[bytes] = [b""]
    for name, kind in frame.FIELDS:
        value = getattr(frame, name)
        if kind in _INTS:
            parts.append(_INTS[kind].pack(value))
        elif kind in (PATH, TEXT):
            raw = value.encode("utf-8") if kind == TEXT else value
            parts.append(_LEN16.pack(len(raw)))
            parts.append(raw)
        elif kind == NAME:
            parts.append(bytes((len(value),)))
            parts.append(value)
        elif kind == BLOB:
            parts.append(_LEN32.pack(len(value)))
            parts.append(value)
        elif kind in _FIXED:
            parts.append(value)
        else:  # pragma: no cover - a FIELDS typo is our bug
            raise LocalProtocolError(f"unknown field kind {kind!r}")
    body_len = sum(len(p) for p in parts)
    if body_len + 2 > MAX_FRAME:
        raise LocalProtocolError(f"{type(frame).__name__} frame of {body_len} bytes exceeds the limit")
    parts[0] = _HEADER.pack(body_len + 2, PROTOCOL_VERSION, frame.TYPE)
    return parts


def decode_body(type_code: int, body: memoryview, *, views: bool = False) -> Frame:
    """Build the frame of *type_code* from its body bytes. With *views*,
    the frame's ``VIEWS`` fields are views of *body* instead of copies: the
    caller guarantees *body* never changes.

    Raises:
        RemoteProtocolError: unknown type, truncated or trailing bytes, or a
            value the frame class refuses.
    """
    cls = FRAME_TYPES.get(type_code)
    if cls is None:
        raise RemoteProtocolError(f"unknown frame type {type_code}")
    values = {}
    pos = 0
    end = len(body)
    keep = cls.VIEWS if views else ()

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > end:
            raise RemoteProtocolError(f"truncated {cls.__name__} frame")
        chunk = body[pos:pos + n]
        pos += n
        return chunk

    for name, kind in cls.FIELDS:
        if kind in _INTS:
            st = _INTS[kind]
            values[name] = st.unpack(take(st.size))[0]
        elif kind in (PATH, TEXT):
            raw = bytes(take(_LEN16.unpack(take(2))[0]))
            if kind == TEXT:
                try:
                    values[name] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise RemoteProtocolError(f"{cls.__name__}.{name} is not UTF-8") from None
            else:
                values[name] = raw
        elif kind == NAME:
            values[name] = bytes(take(take(1)[0]))
        elif kind == BLOB:
            blob = take(_LEN32.unpack(take(4))[0])
            values[name] = blob if name in keep else bytes(blob)
        else:
            values[name] = bytes(take(_FIXED[kind]))
    if pos != end:
        raise RemoteProtocolError(f"{end - pos} trailing bytes in {cls.__name__} frame")
    try:
        return cls(**values)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"invalid {cls.__name__} frame: {exc}") from None


class FrameDecoder:
    """Accumulates received bytes and yields whole frames.

    Usage: ``receive_data(chunk)`` then ``next_frame()`` until it returns
    None. ``receive_data(b"")`` marks the end of the stream; a frame cut
    short by it is an error. While a large frame is being gathered,
    ``receive_buffer()`` is where its remaining bytes go: receive into it
    and report the count with ``received(n)``, which saves a copy.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame  # the longest frame accepted now; at most MAX_FRAME
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._large: bytearray | None = None  # a large frame being gathered, header included
        self._filled = 0

    def receive_data(self, data: bytes | bytearray) -> None:
        if self._eof and data:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._eof = True
            return
        if self._large is not None and self._filled < len(self._large):
            take = min(len(data), len(self._large) - self._filled)
            self._large[self._filled:self._filled + take] = memoryview(data)[:take]
            self._filled += take
            if take == len(data):
                return
            data = data[take:]
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def receive_buffer(self) -> memoryview | None:
        """The rest of the large frame being gathered, to receive into
        (then call ``received``); None when bytes go to ``receive_data``."""
        if self._large is None or self._filled == len(self._large) or self._eof:
            return None
        return memoryview(self._large)[self._filled:]

    def received(self, count: int) -> None:
        """*count* bytes were put at the start of ``receive_buffer()``."""
        if self._large is None or not 0 < count <= len(self._large) - self._filled:
            raise LocalProtocolError(f"received({count}) does not fit the receive buffer")
        self._filled += count

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos + self._filled

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: the bytes are not a valid frame, or the
                stream ended inside one.
        """
        if self._large is not None:
            if self._filled < len(self._large):
                if self._eof:
                    raise RemoteProtocolError("stream ended inside a frame")
                return None
            large, self._large, self._filled = self._large, None, 0
            type_code = _HEADER.unpack_from(large)[2]  # the header was checked when the frame began
            return self._decode(type_code, memoryview(large)[HEADER_SIZE:], views=True)
        avail = len(self._buf) - self._pos
        if avail < HEADER_SIZE:
            if self._eof and avail:
                raise RemoteProtocolError("stream ended inside a frame header")
            return None
        length, version, type_code = _HEADER.unpack_from(self._buf, self._pos)
        if length >> 16 == _TLS_HANDSHAKE_RECORD:
            raise RemoteProtocolError("the peer began a TLS handshake, and this side runs without TLS")
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
        if length < 2 or length > self.max_frame:
            raise RemoteProtocolError(f"frame length {length} outside 2..{self.max_frame}")
        if avail < 4 + length:
            if self._eof:
                raise RemoteProtocolError("stream ended inside a frame")
            if length >= LARGE_FRAME:  # gathered apart: everything buffered belongs to it
                self._large = bytearray(4 + length)
                self._large[:avail] = memoryview(self._buf)[self._pos:]
                self._filled = avail
                self._buf.clear()
                self._pos = 0
            return None
        start = self._pos + HEADER_SIZE
        stop = self._pos + 4 + length
        with memoryview(self._buf) as view:
            frame = self._decode(type_code, view[start:stop])
        self._pos = stop
        return frame

    @staticmethod
    def _decode(type_code: int, body: memoryview, *, views: bool = False) -> Frame:
        try:
            return decode_body(type_code, body, views=views)
        except RemoteProtocolError as exc:
            message = str(exc)
        # Raised afresh, and without *body*: the first error's traceback holds
        # views of the buffer, which would keep it from ever being resized.
        del body
        raise RemoteProtocolError(message)
