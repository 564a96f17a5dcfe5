"""Session state machine: handshake, authentication, ordering, acks, errors."""

from __future__ import annotations

import struct

import pytest

import transport as tp
from transport import _auth
from transport._codec import MAX_FRAME
from transport._frames import Challenge, Proof
from transport._session import MAX_HANDSHAKE_FRAME

KEY = b"k" * 32
OTHER_KEY = b"x" * 32
GROUP = b"g" * 16
P_NONCE = b"p" * 32
S_NONCE = b"s" * 32
S = tp.SessionState

Session = tp.PrimarySession | tp.SecondarySession


def _pump(dst: Session, data: bytes) -> list[tp.Frame]:
    """Deliver *data* to *dst* and collect every event it returns."""
    dst.receive_data(data)
    events = []
    while (event := dst.next_event()) is not None:
        events.append(event)
    return events


def _authenticate(secondary_key: bytes = KEY) -> tuple[tp.PrimarySession, tp.SecondarySession]:
    """Run the handshake up to the secondary's AUTHENTICATED state."""
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    secondary = tp.SecondarySession(secondary_key, S_NONCE)
    assert primary.state is S.START
    assert secondary.state is S.START
    assert _pump(secondary, primary.start()) == []
    assert primary.state is S.HELLO_SENT
    assert secondary.state is S.CHALLENGED
    assert _pump(primary, secondary.data_to_send()) == []
    assert primary.state is S.PROOF_SENT
    assert _pump(secondary, primary.data_to_send()) == [tp.Hello(group_id=GROUP, nonce=P_NONCE)]
    assert secondary.state is S.AUTHENTICATED
    assert secondary.group_id == GROUP
    return primary, secondary


def _open(last_seq: int = 0) -> tuple[tp.PrimarySession, tp.SecondarySession]:
    primary, secondary = _authenticate()
    welcome = tp.Welcome(last_seq=last_seq, fresh=0)
    assert _pump(primary, secondary.send(welcome)) == [welcome]
    return primary, secondary


def _unlink(seq: int) -> tp.Unlink:
    return tp.Unlink(seq=seq, path=f"f{seq}".encode())


# --- handshake -------------------------------------------------------------------


@pytest.mark.parametrize("last_seq", [0, 41, 2**40])
def test_handshake_opens_both_sides_at_the_replicas_position(last_seq: int) -> None:
    primary, secondary = _open(last_seq)
    assert primary.state is secondary.state is S.OPEN
    assert primary.last_sent == primary.last_acked == last_seq
    assert secondary.expected_seq == last_seq + 1


def test_handshake_produces_no_extra_bytes() -> None:
    primary, secondary = _open()
    assert primary.data_to_send() == b""
    assert secondary.data_to_send() == b""


def test_operations_flow_in_order_after_the_welcome() -> None:
    primary, secondary = _open(last_seq=41)
    ops = [_unlink(42), tp.Write(seq=43, path=b"f", offset=0, data=b"x"), tp.Fsync(seq=44, path=b"f")]
    data = b"".join(primary.send(op) for op in ops)
    assert primary.last_sent == 44
    assert _pump(secondary, data) == ops
    assert secondary.expected_seq == 45


def test_operations_decoded_one_byte_at_a_time_arrive_in_order() -> None:
    primary, secondary = _open()
    ops = [_unlink(seq) for seq in range(1, 6)]
    data = b"".join(primary.send(op) for op in ops)
    received = []
    for i in range(len(data)):
        received += _pump(secondary, data[i:i + 1])
    assert received == ops


def test_acks_are_cumulative() -> None:
    primary, secondary = _open(last_seq=10)
    _pump(secondary, b"".join(primary.send(_unlink(seq)) for seq in range(11, 16)))
    assert _pump(primary, secondary.send(tp.Ack(seq=13))) == [tp.Ack(seq=13)]
    assert primary.last_acked == 13
    assert _pump(primary, secondary.send(tp.Ack(seq=13))) == [tp.Ack(seq=13)]  # a repeat changes nothing
    assert _pump(primary, secondary.send(tp.Ack(seq=15))) == [tp.Ack(seq=15)]
    assert primary.last_acked == 15


@pytest.mark.parametrize("seq", [0, 9, 12])
def test_ack_outside_acked_and_sent_is_the_peers_error(seq: int) -> None:
    primary, secondary = _open(last_seq=10)
    _pump(secondary, primary.send(_unlink(11)))
    _pump(primary, secondary.send(tp.Ack(seq=11)))
    raw = tp.encode(tp.Ack(seq=seq))  # the secondary's session is not the one at fault here
    with pytest.raises(tp.RemoteProtocolError, match="outside"):
        _pump(primary, raw)
    assert primary.state is S.ERROR


def test_ack_below_the_last_ack_is_the_peers_error() -> None:
    primary, secondary = _open()
    _pump(secondary, b"".join(primary.send(_unlink(seq)) for seq in (1, 2, 3)))
    _pump(primary, secondary.send(tp.Ack(seq=2)))
    with pytest.raises(tp.RemoteProtocolError, match="outside"):
        _pump(primary, tp.encode(tp.Ack(seq=1)))


def test_nack_is_returned_and_checked_like_an_ack() -> None:
    primary, secondary = _open()
    _pump(secondary, primary.send(_unlink(1)))
    nack = tp.Nack(seq=1, errno=2, message="No such file")
    assert _pump(primary, secondary.send(nack)) == [nack]
    assert primary.last_acked == 0
    with pytest.raises(tp.RemoteProtocolError, match="outside"):
        _pump(primary, tp.encode(tp.Nack(seq=2, errno=2, message="")))


def test_listing_must_answer_an_unacked_operation() -> None:
    primary, secondary = _open()
    _pump(secondary, primary.send(tp.ListDir(seq=1, path=b"")))
    listing = tp.Listing(seq=1, more=0, entries=b"")
    assert _pump(primary, secondary.send(listing)) == [listing]
    _pump(primary, secondary.send(tp.Ack(seq=1)))
    with pytest.raises(tp.RemoteProtocolError, match="Listing"):
        _pump(primary, tp.encode(listing))


def test_digests_must_answer_an_unacked_operation() -> None:
    primary, secondary = _open()
    _pump(secondary, primary.send(tp.Checksum(seq=1, path=b"f", offset=0, count=2)))
    digests = tp.Digests(seq=1, digests=bytes(16))
    assert _pump(primary, secondary.send(digests)) == [digests]
    _pump(primary, secondary.send(tp.Ack(seq=1)))
    with pytest.raises(tp.RemoteProtocolError, match="Digests"):
        _pump(primary, tp.encode(digests))


@pytest.mark.parametrize("seq", [1, 3, 5])
def test_a_gap_or_repeat_in_sequence_numbers_is_refused(seq: int) -> None:
    primary, secondary = _open()
    _pump(secondary, primary.send(_unlink(1)))
    with pytest.raises(tp.RemoteProtocolError, match="expected 2"):
        _pump(secondary, tp.encode(_unlink(seq)))
    assert secondary.state is S.ERROR


def test_sequence_numbers_restart_from_the_welcome_not_from_one() -> None:
    primary, secondary = _open(last_seq=7)
    with pytest.raises(tp.RemoteProtocolError, match="expected 8"):
        _pump(secondary, tp.encode(_unlink(1)))


def test_the_primary_cannot_send_out_of_order() -> None:
    primary, _ = _open(last_seq=5)
    with pytest.raises(tp.LocalProtocolError, match="does not follow 5"):
        primary.send(_unlink(7))
    assert primary.state is S.ERROR
    with pytest.raises(tp.LocalProtocolError):
        primary.send(_unlink(6))


def test_ping_and_pong_pass_both_ways() -> None:
    primary, secondary = _open()
    assert _pump(secondary, primary.send(tp.Ping(token=3))) == [tp.Ping(token=3)]
    assert _pump(primary, secondary.send(tp.Pong(token=3))) == [tp.Pong(token=3)]
    assert _pump(primary, secondary.send(tp.Ping(token=4))) == [tp.Ping(token=4)]
    assert _pump(secondary, primary.send(tp.Pong(token=4))) == [tp.Pong(token=4)]


def test_error_frame_is_handed_to_the_caller() -> None:
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    primary.start()
    assert _pump(primary, tp.encode(tp.Error(message="no room"))) == [tp.Error(message="no room")]


def test_close_handshake_ends_in_closed() -> None:
    primary, secondary = _open()
    assert _pump(secondary, primary.send(tp.Close(last_seq=0))) == [tp.Close(last_seq=0)]
    assert primary.state is secondary.state is S.CLOSING
    _pump(primary, secondary.send(tp.Close(last_seq=0)))
    assert primary.state is secondary.state is S.CLOSED


def test_no_operation_may_follow_a_close() -> None:
    primary, secondary = _open()
    _pump(secondary, primary.send(tp.Close(last_seq=0)))
    with pytest.raises(tp.LocalProtocolError):
        primary.send(_unlink(1))
    with pytest.raises(tp.RemoteProtocolError, match="unexpected"):
        _pump(secondary, tp.encode(_unlink(1)))


# --- authentication -----------------------------------------------------------------


def test_wrong_key_fails_on_the_primary_when_the_secondary_proves_itself() -> None:
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    secondary = tp.SecondarySession(OTHER_KEY, S_NONCE)
    _pump(secondary, primary.start())
    with pytest.raises(tp.AuthenticationError, match="secondary"):
        _pump(primary, secondary.data_to_send())
    assert primary.state is S.ERROR
    assert primary.data_to_send() == b"", "the primary proved itself to a peer that failed"


def test_forged_proof_fails_on_the_secondary_and_no_operation_is_returned() -> None:
    primary = tp.PrimarySession(OTHER_KEY, P_NONCE, GROUP)  # the attacker
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, primary.start())
    secondary.data_to_send()
    forged = tp.encode(Proof(proof=b"\0" * 32)) + tp.encode(_unlink(1))
    secondary.receive_data(forged)
    with pytest.raises(tp.AuthenticationError, match="primary"):
        secondary.next_event()
    assert secondary.state is S.ERROR
    with pytest.raises(tp.LocalProtocolError):
        secondary.next_event()  # the buffered Unlink is never handed out


def test_proof_from_a_wrong_key_fails_on_the_secondary() -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, tp.encode(tp.Hello(group_id=GROUP, nonce=P_NONCE)))
    wrong = _auth.proof(OTHER_KEY, b"primary", GROUP, P_NONCE, S_NONCE)
    with pytest.raises(tp.AuthenticationError):
        _pump(secondary, tp.encode(Proof(proof=wrong)))


def test_the_secondarys_own_proof_reflected_back_does_not_authenticate() -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, tp.encode(tp.Hello(group_id=GROUP, nonce=P_NONCE)))
    challenge = tp.FrameDecoder()
    challenge.receive_data(secondary.data_to_send())
    frame = challenge.next_frame()
    assert isinstance(frame, Challenge)
    with pytest.raises(tp.AuthenticationError):
        _pump(secondary, tp.encode(Proof(proof=frame.proof)))


def test_a_proof_for_another_group_does_not_authenticate() -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, tp.encode(tp.Hello(group_id=GROUP, nonce=P_NONCE)))
    other_group = _auth.proof(KEY, b"primary", b"h" * 16, P_NONCE, S_NONCE)
    with pytest.raises(tp.AuthenticationError):
        _pump(secondary, tp.encode(Proof(proof=other_group)))


@pytest.mark.parametrize("before", ["hello", "proof"])
def test_operations_before_authentication_are_refused(before: str) -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    if before == "proof":
        _pump(secondary, tp.encode(tp.Hello(group_id=GROUP, nonce=P_NONCE)))
    with pytest.raises(tp.RemoteProtocolError, match="unexpected Unlink"):
        _pump(secondary, tp.encode(_unlink(0)))
    assert secondary.state is S.ERROR


def test_operations_between_proof_and_welcome_are_refused() -> None:
    _, secondary = _authenticate()
    with pytest.raises(tp.RemoteProtocolError, match="unexpected Unlink"):
        _pump(secondary, tp.encode(_unlink(1)))


def test_replayed_challenge_from_another_session_does_not_authenticate() -> None:
    primary_a = tp.PrimarySession(KEY, b"a" * 32, GROUP)
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, primary_a.start())
    challenge = secondary.data_to_send()
    primary_b = tp.PrimarySession(KEY, b"b" * 32, GROUP)  # a different nonce
    primary_b.start()
    with pytest.raises(tp.AuthenticationError):
        _pump(primary_b, challenge)


def test_a_challenge_with_a_wrong_proof_is_refused() -> None:
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    primary.start()
    with pytest.raises(tp.AuthenticationError):
        _pump(primary, tp.encode(Challenge(nonce=S_NONCE, proof=b"\0" * 32)))


def test_welcome_before_the_challenge_is_refused() -> None:
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    primary.start()
    with pytest.raises(tp.RemoteProtocolError, match="unexpected Welcome"):
        _pump(primary, tp.encode(tp.Welcome(last_seq=0, fresh=1)))
    assert primary.state is S.ERROR


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_a_frame_over_the_handshake_limit_is_refused_from_its_header_before_the_session_is_open(role: str) -> None:
    session: Session
    if role == "primary":
        session = tp.PrimarySession(KEY, P_NONCE, GROUP)
        session.start()
    else:
        session = tp.SecondarySession(KEY, S_NONCE)
    assert session.frame_limit == MAX_HANDSHAKE_FRAME
    session.receive_data(struct.pack(">IBB", MAX_HANDSHAKE_FRAME + 1, tp.PROTOCOL_VERSION, tp.Hello.TYPE))
    with pytest.raises(tp.RemoteProtocolError, match=f"outside 2..{MAX_HANDSHAKE_FRAME}"):
        session.next_event()
    assert session.state is S.ERROR
    assert session.receive_buffer() is None  # nothing set aside for the announced frame


def test_the_largest_frames_are_accepted_once_the_session_is_open() -> None:
    primary, secondary = _authenticate()
    assert secondary.frame_limit == MAX_HANDSHAKE_FRAME
    assert primary.frame_limit == MAX_HANDSHAKE_FRAME  # authenticated, but not open yet
    welcome = tp.Welcome(last_seq=0, fresh=1)
    assert _pump(primary, secondary.send(welcome)) == [welcome]
    assert primary.frame_limit == secondary.frame_limit == MAX_FRAME
    write = tp.Write(seq=1, path=b"f", offset=0, data=b"x" * tp.MAX_DATA)
    assert _pump(secondary, primary.send(write)) == [write]


def test_each_side_counts_as_authenticated_once_the_peer_proved_the_key() -> None:
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, primary.start())
    assert not secondary.authenticated
    _pump(primary, secondary.data_to_send())
    assert primary.authenticated
    assert not secondary.authenticated
    _pump(secondary, primary.data_to_send())
    assert secondary.authenticated


def test_a_second_hello_is_refused() -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    hello = tp.encode(tp.Hello(group_id=GROUP, nonce=P_NONCE))
    _pump(secondary, hello)
    with pytest.raises(tp.RemoteProtocolError, match="unexpected Hello"):
        _pump(secondary, hello)


# --- what each side may send --------------------------------------------------------


def test_sending_a_frame_the_state_does_not_allow_is_our_bug() -> None:
    primary = tp.PrimarySession(KEY, P_NONCE, GROUP)
    with pytest.raises(tp.LocalProtocolError, match="may not send Unlink in state START"):
        primary.send(_unlink(1))
    assert primary.state is S.ERROR


@pytest.mark.parametrize("frame", [tp.Ack(seq=1), tp.Welcome(last_seq=0, fresh=1), _unlink(1)],
                         ids=["Ack", "Welcome", "Unlink"])
def test_the_secondary_may_send_nothing_but_error_before_authentication(frame: tp.Frame) -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    _pump(secondary, tp.encode(tp.Hello(group_id=GROUP, nonce=P_NONCE)))
    with pytest.raises(tp.LocalProtocolError):
        secondary.send(frame)
    assert secondary.state is S.ERROR


def test_the_secondary_may_send_an_error_before_authentication() -> None:
    secondary = tp.SecondarySession(KEY, S_NONCE)
    assert secondary.send(tp.Error(message="busy")) == tp.encode(tp.Error(message="busy"))


def test_the_primary_may_not_send_operations_before_the_welcome() -> None:
    primary, _ = _authenticate()
    with pytest.raises(tp.LocalProtocolError, match="PROOF_SENT"):
        primary.send(_unlink(1))


def test_the_secondary_may_not_send_operations() -> None:
    _, secondary = _open()
    with pytest.raises(tp.LocalProtocolError):
        secondary.send(_unlink(1))


def test_the_primary_may_not_send_acks() -> None:
    primary, _ = _open()
    with pytest.raises(tp.LocalProtocolError):
        primary.send(tp.Ack(seq=0))


# --- after an error ---------------------------------------------------------------------


def test_after_a_remote_error_the_session_refuses_everything() -> None:
    primary, secondary = _open()
    with pytest.raises(tp.RemoteProtocolError):
        _pump(primary, tp.encode(tp.Ack(seq=1)))
    assert primary.state is S.ERROR
    with pytest.raises(tp.LocalProtocolError):
        primary.next_event()
    with pytest.raises(tp.LocalProtocolError):
        primary.send(_unlink(1))
    with pytest.raises(tp.LocalProtocolError):
        primary.send(tp.Ping(token=1))
    assert primary.state is S.ERROR


def test_garbage_bytes_put_the_session_in_error() -> None:
    _, secondary = _open()
    with pytest.raises(tp.RemoteProtocolError):
        _pump(secondary, b"\0\0\0\x05\x09garbage")
    assert secondary.state is S.ERROR


def test_the_peer_closing_inside_a_frame_puts_the_session_in_error() -> None:
    primary, secondary = _open()
    data = primary.send(_unlink(1))
    secondary.receive_data(data[:-1])
    secondary.receive_data(b"")
    with pytest.raises(tp.RemoteProtocolError, match="ended"):
        secondary.next_event()
    assert secondary.state is S.ERROR


def test_data_after_end_of_stream_puts_the_session_in_error() -> None:
    _, secondary = _open()
    secondary.receive_data(b"")
    with pytest.raises(tp.LocalProtocolError):
        secondary.receive_data(b"x")
    assert secondary.state is S.ERROR


# --- construction -------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    pytest.param(lambda: tp.SecondarySession(b"short", S_NONCE), id="short-key"),
    pytest.param(lambda: tp.SecondarySession(KEY, b"n" * 31), id="short-nonce"),
    pytest.param(lambda: tp.PrimarySession(KEY, P_NONCE, b"g" * 15), id="short-group"),
    pytest.param(lambda: tp.PrimarySession(b"k" * 31, P_NONCE, GROUP), id="primary-short-key"),
])
def test_sessions_refuse_bad_parameters(build) -> None:
    with pytest.raises(tp.LocalProtocolError):
        build()
