"""Sans-IO replication session: handshake, authentication, ordered operations
and cumulative acks for one consistency group. No sockets, no clock, no
randomness: callers pass nonces in and move bytes themselves.

How this works: ``receive_data(bytes)`` feeds the decoder; ``next_event()``
returns the next frame the caller must act on (authentication frames are
consumed here); ``send(frame) -> bytes`` checks the frame is allowed now and
returns its bytes; ``data_to_send()`` returns bytes the session produced on
its own (the handshake replies). Which frame may be sent or received in which
state is the two tables below, nothing else.

Caveats:
- After any ProtocolError the session is in ERROR and refuses everything;
  drop the connection.
- The secondary checks sequence numbers are contiguous; a gap or repeat is
  the peer's error, because applying out of order would break write-order
  fidelity.
- Until the session is OPEN a frame may be at most MAX_HANDSHAKE_FRAME
  bytes: a peer that has proved nothing cannot make us hold more (a header
  announcing more is an error at once, before anything of it is buffered).
"""

from __future__ import annotations

import enum

from . import _auth
from ._codec import MAX_FRAME, FrameDecoder, encode, encode_parts
from ._errors import AuthenticationError, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._frames import (
    GROUP_ID_SIZE,
    NONCE_SIZE,
    Ack,
    Adopted,
    Challenge,
    Changes,
    Close,
    DataMap,
    Digests,
    Durable,
    Error,
    Fetched,
    Frame,
    Hello,
    Kept,
    Listing,
    Nack,
    Operation,
    Ping,
    Pong,
    Proof,
    Welcome,
)

# Every frame of the handshake is smaller (a Welcome with the longest generation history is 531 bytes on the
# wire, an Error at most 1 032); 4 KiB leaves room to grow and is all an unauthenticated peer can make us hold.
MAX_HANDSHAKE_FRAME = 4096


class SessionState(enum.Enum):
    START = "START"
    HELLO_SENT = "HELLO_SENT"          # primary: waiting for the challenge
    PROOF_SENT = "PROOF_SENT"          # primary: waiting for welcome
    CHALLENGED = "CHALLENGED"          # secondary: waiting for the proof
    AUTHENTICATED = "AUTHENTICATED"    # secondary: caller decides the welcome
    OPEN = "OPEN"
    CLOSING = "CLOSING"                # close sent, waiting for the peer's
    CLOSED = "CLOSED"
    ERROR = "ERROR"


S = SessionState
_OPS = "operation"

Kinds = dict[str, dict[SessionState, set[object]]]

# role -> state -> frame kinds the peer may send us
RECEIVE: Kinds = {
    "primary": {
        S.HELLO_SENT: {Challenge, Error},
        S.PROOF_SENT: {Welcome, Error},
        S.OPEN: {Ack, Nack, Listing, Digests, DataMap, Changes, Kept, Fetched, Adopted, Durable, Ping, Pong, Close,
                   Error},
        S.CLOSING: {Ack, Nack, Listing, Digests, DataMap, Changes, Kept, Fetched, Adopted, Durable, Ping, Pong, Close,
                   Error},
    },
    "secondary": {
        S.START: {Hello, Error},
        S.CHALLENGED: {Proof, Error},
        S.OPEN: {_OPS, Ping, Pong, Close, Error},
        S.CLOSING: {Ping, Pong, Close, Error},
    },
}
# role -> state -> frame kinds we may send
SEND: Kinds = {
    "primary": {
        S.START: {Hello},
        S.OPEN: {_OPS, Ping, Pong, Close, Error},
        S.CLOSING: {Ping, Pong, Close, Error},
    },
    "secondary": {
        S.START: {Error},
        S.CHALLENGED: {Error},
        S.AUTHENTICATED: {Welcome, Error},
        S.OPEN: {Ack, Nack, Listing, Digests, DataMap, Changes, Kept, Fetched, Adopted, Durable, Ping, Pong, Close,
                   Error},
        S.CLOSING: {Ack, Nack, Listing, Digests, DataMap, Changes, Kept, Fetched, Adopted, Durable, Ping, Pong, Close,
                   Error},
    },
}


def _kind(frame: Frame) -> object:
    return _OPS if isinstance(frame, Operation) else type(frame)


class _Session:
    role: str

    def __init__(self, key: bytes, nonce: bytes) -> None:
        if len(key) < _auth.MIN_KEY_BYTES:
            raise LocalProtocolError(f"pre-shared key must be at least {_auth.MIN_KEY_BYTES} bytes")
        if len(nonce) != NONCE_SIZE:
            raise LocalProtocolError(f"nonce must be {NONCE_SIZE} bytes")
        self._key = key
        self._nonce = nonce
        self._decoder = FrameDecoder(max_frame=MAX_HANDSHAKE_FRAME)
        self._outgoing: list[bytes] = []
        self.state = S.START
        self.group_id: bytes | None = None
        self.authenticated = False  # the peer proved it holds the key

    @property
    def frame_limit(self) -> int:
        """The longest frame the peer may send now (small until OPEN): no
        point reading more than this at once."""
        return self._decoder.max_frame

    def _open(self) -> None:
        self.state = S.OPEN
        self._decoder.max_frame = MAX_FRAME

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed received bytes; ``b""`` means the peer closed the stream."""
        try:
            self._decoder.receive_data(data)
        except ProtocolError:
            self.state = S.ERROR
            raise

    def receive_buffer(self) -> memoryview | None:
        """Where the next received bytes may go directly, to save a copy
        (see ``FrameDecoder.receive_buffer``); None: use ``receive_data``."""
        return None if self.state is S.ERROR else self._decoder.receive_buffer()

    def received(self, count: int) -> None:
        """*count* bytes were received into ``receive_buffer()``."""
        self._decoder.received(count)

    def data_to_send(self) -> bytes:
        """Bytes the session produced by itself (handshake replies)."""
        out = b"".join(self._outgoing)
        self._outgoing.clear()
        return out

    def next_event(self) -> Frame | None:
        """Return the next frame for the caller, or None until more data.

        Raises:
            RemoteProtocolError: the peer broke the protocol; state is ERROR.
        """
        if self.state is S.ERROR:
            raise LocalProtocolError("session is in ERROR")
        while True:
            try:
                frame = self._decoder.next_frame()
                if frame is None:
                    return None
                allowed = RECEIVE[self.role].get(self.state, set())
                if _kind(frame) not in allowed:
                    raise RemoteProtocolError(f"unexpected {type(frame).__name__} frame in state {self.state.value}")
                event = self._handle(frame)
            except ProtocolError:
                self.state = S.ERROR
                raise
            if event is not None:
                return event

    def send(self, frame: Frame) -> bytes:
        """Return the bytes of *frame*, if it may be sent now.

        Raises:
            LocalProtocolError: the frame is not allowed in this state.
        """
        return b"".join(self.send_parts(frame))

    def send_parts(self, frame: Frame) -> list[bytes]:
        """Like ``send``, as pieces (a large payload is not copied)."""
        allowed = SEND[self.role].get(self.state, set())
        if _kind(frame) not in allowed:
            state, self.state = self.state, S.ERROR
            raise LocalProtocolError(f"may not send {type(frame).__name__} in state {state.value}")
        try:
            self._sent(frame)
        except ProtocolError:
            self.state = S.ERROR
            raise
        return encode_parts(frame)

    def _handle(self, frame: Frame) -> Frame | None:
        if isinstance(frame, Close):
            self.state = S.CLOSED if self.state is S.CLOSING else S.CLOSING
            return frame
        return frame

    def _sent(self, frame: Frame) -> None:
        if isinstance(frame, Close):
            self.state = S.CLOSED if self.state is S.CLOSING else S.CLOSING


class PrimarySession(_Session):
    """The primary's end. Call ``start()``, send its bytes, then pump events
    until Welcome; after that, send operations and read Acks."""

    role = "primary"

    def __init__(self, key: bytes, nonce: bytes, group_id: bytes) -> None:
        super().__init__(key, nonce)
        if len(group_id) != GROUP_ID_SIZE:
            raise LocalProtocolError(f"group id must be {GROUP_ID_SIZE} bytes")
        self.group_id = group_id
        self.last_sent = 0
        self.last_acked = 0

    def start(self) -> bytes:
        assert self.group_id is not None  # set in __init__
        return self.send(Hello(group_id=self.group_id, nonce=self._nonce))

    def _sent(self, frame: Frame) -> None:
        if isinstance(frame, Hello):
            self.state = S.HELLO_SENT
        elif isinstance(frame, Operation):
            if frame.seq != self.last_sent + 1:
                raise LocalProtocolError(f"operation seq {frame.seq} does not follow {self.last_sent}")
            self.last_sent = frame.seq
        else:
            super()._sent(frame)

    def _handle(self, frame: Frame) -> Frame | None:
        if isinstance(frame, Challenge):
            assert self.group_id is not None
            expected = _auth.proof(self._key, b"secondary", self.group_id, self._nonce, frame.nonce)
            if not _auth.proof_matches(expected, frame.proof):
                raise AuthenticationError("secondary failed authentication (wrong key?)")
            self.authenticated = True
            mine = _auth.proof(self._key, b"primary", self.group_id, self._nonce, frame.nonce)
            self._outgoing.append(encode(Proof(proof=mine)))
            self.state = S.PROOF_SENT
            return None
        if isinstance(frame, Welcome):
            self._open()
            self.last_sent = self.last_acked = frame.last_seq
            return frame
        if isinstance(frame, Durable) and frame.seq > self.last_sent:
            raise RemoteProtocolError(f"Durable for seq {frame.seq} beyond {self.last_sent}")
        replies = (Listing, Digests, DataMap, Changes, Kept, Fetched, Adopted)
        if isinstance(frame, replies) and not self.last_acked < frame.seq <= self.last_sent:
            raise RemoteProtocolError(f"{type(frame).__name__} for seq {frame.seq} outside "
                                      f"{self.last_acked}..{self.last_sent}")
        if isinstance(frame, (Ack, Nack)):
            if not self.last_acked <= frame.seq <= self.last_sent:
                raise RemoteProtocolError(
                    f"{type(frame).__name__} for seq {frame.seq} outside {self.last_acked}..{self.last_sent}")
            if isinstance(frame, Ack):
                self.last_acked = frame.seq
            return frame
        return super()._handle(frame)


class SecondarySession(_Session):
    """The secondary's end. Pump events: Hello is answered here; after a good
    Proof the state is AUTHENTICATED and ``next_event`` returns the Hello so
    the caller can open the replica and ``send(Welcome(...))``."""

    role = "secondary"

    def __init__(self, key: bytes, nonce: bytes) -> None:
        super().__init__(key, nonce)
        self._peer_nonce = b""
        self.expected_seq = 0

    def _handle(self, frame: Frame) -> Frame | None:
        if isinstance(frame, Hello):
            self.group_id = frame.group_id
            self._peer_nonce = frame.nonce
            mine = _auth.proof(self._key, b"secondary", frame.group_id, frame.nonce, self._nonce)
            self._outgoing.append(encode(Challenge(nonce=self._nonce, proof=mine)))
            self.state = S.CHALLENGED
            return None
        if isinstance(frame, Proof):
            assert self.group_id is not None
            expected = _auth.proof(self._key, b"primary", self.group_id, self._peer_nonce, self._nonce)
            if not _auth.proof_matches(expected, frame.proof):
                raise AuthenticationError("primary failed authentication (wrong key?)")
            self.authenticated = True
            self.state = S.AUTHENTICATED
            return Hello(group_id=self.group_id, nonce=self._peer_nonce)
        if isinstance(frame, Operation):
            if frame.seq != self.expected_seq:
                raise RemoteProtocolError(f"operation seq {frame.seq}, expected {self.expected_seq}")
            self.expected_seq += 1
            return frame
        return super()._handle(frame)

    def _sent(self, frame: Frame) -> None:
        if isinstance(frame, Welcome):
            self._open()
            self.expected_seq = frame.last_seq + 1
        else:
            super()._sent(frame)
