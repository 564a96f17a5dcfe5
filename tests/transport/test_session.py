"""Session state machine: handshake, authentication, ordering, acks."""

from __future__ import annotations

import pytest

import transport as tp
from transport._frames import Challenge, Proof

KEY = b"k" * 32
GROUP = b"g" * 16


def _pump(src: tp.PrimarySession | tp.SecondarySession, dst: tp.PrimarySession | tp.SecondarySession,
          data: bytes) -> list[tp.Frame]:
    dst.receive_data(data)
    events = []
    while (event := dst.next_event()) is not None:
        events.append(event)
    return events


def _handshake(last_seq: int = 0, secondary_key: bytes = KEY) -> tuple[tp.PrimarySession, tp.SecondarySession]:
    primary = tp.PrimarySession(KEY, b"p" * 32, GROUP)
    secondary = tp.SecondarySession(secondary_key, b"s" * 32)
    assert _pump(primary, secondary, primary.start()) == []
    assert _pump(secondary, primary, secondary.data_to_send()) == []
    events = _pump(primary, secondary, primary.data_to_send())
    assert events == [tp.Hello(group_id=GROUP, nonce=b"p" * 32)]
    assert secondary.state is tp.SessionState.AUTHENTICATED
    welcome = secondary.send(tp.Welcome(last_seq=last_seq, fresh=0))
    assert _pump(secondary, primary, welcome) == [tp.Welcome(last_seq=last_seq, fresh=0)]
    return primary, secondary


def test_handshake_opens_both_sides_at_the_replicas_position() -> None:
    primary, secondary = _handshake(last_seq=41)
    assert primary.state is secondary.state is tp.SessionState.OPEN
    ops = [tp.Unlink(seq=42, path=b"a"), tp.Unlink(seq=43, path=b"b")]
    data = b"".join(primary.send(op) for op in ops)
    assert _pump(primary, secondary, data) == ops
    assert _pump(secondary, primary, secondary.send(tp.Ack(seq=43))) == [tp.Ack(seq=43)]
    assert primary.last_acked == 43


def test_acks_outside_what_was_sent_are_the_peers_error() -> None:
    primary, secondary = _handshake()
    primary.send(tp.Unlink(seq=1, path=b"a"))
    with pytest.raises(tp.RemoteProtocolError, match="outside"):
        _pump(secondary, primary, secondary.send(tp.Ack(seq=5)))
    assert primary.state is tp.SessionState.ERROR
    with pytest.raises(tp.LocalProtocolError):
        primary.next_event()


@pytest.mark.parametrize("seq", [1, 3, 5])
def test_a_gap_or_repeat_in_sequence_numbers_is_refused(seq: int) -> None:
    primary, secondary = _handshake()
    _pump(primary, secondary, primary.send(tp.Unlink(seq=1, path=b"a")))
    raw = tp.encode(tp.Unlink(seq=seq, path=b"b"))
    with pytest.raises(tp.RemoteProtocolError, match="expected 2"):
        _pump(primary, secondary, raw)


def test_the_primary_cannot_send_out_of_order() -> None:
    primary, _ = _handshake()
    with pytest.raises(tp.LocalProtocolError):
        primary.send(tp.Unlink(seq=3, path=b"a"))


def test_wrong_key_fails_on_the_primary_when_the_secondary_proves_itself() -> None:
    primary = tp.PrimarySession(KEY, b"p" * 32, GROUP)
    secondary = tp.SecondarySession(b"x" * 32, b"s" * 32)
    _pump(primary, secondary, primary.start())
    with pytest.raises(tp.AuthenticationError):
        _pump(secondary, primary, secondary.data_to_send())


def test_wrong_key_fails_on_the_secondary_and_nothing_is_returned() -> None:
    primary = tp.PrimarySession(KEY, b"p" * 32, GROUP)
    secondary = tp.SecondarySession(KEY, b"s" * 32)
    _pump(primary, secondary, primary.start())
    secondary.data_to_send()
    forged = tp.encode(Proof(proof=b"\0" * 32)) + tp.encode(tp.Unlink(seq=1, path=b"x"))
    with pytest.raises(tp.AuthenticationError):
        _pump(primary, secondary, forged)
    assert secondary.state is tp.SessionState.ERROR


def test_operations_before_authentication_are_refused() -> None:
    secondary = tp.SecondarySession(KEY, b"s" * 32)
    with pytest.raises(tp.RemoteProtocolError, match="unexpected"):
        _pump(secondary, secondary, tp.encode(tp.Unlink(seq=1, path=b"x")))
    secondary = tp.SecondarySession(KEY, b"s" * 32)
    _pump(secondary, secondary, tp.encode(tp.Hello(group_id=GROUP, nonce=b"p" * 32)))
    with pytest.raises(tp.RemoteProtocolError, match="unexpected"):
        _pump(secondary, secondary, tp.encode(tp.Unlink(seq=1, path=b"x")))


def test_replayed_challenge_from_another_session_does_not_authenticate() -> None:
    primary_a = tp.PrimarySession(KEY, b"a" * 32, GROUP)
    secondary = tp.SecondarySession(KEY, b"s" * 32)
    _pump(primary_a, secondary, primary_a.start())
    challenge = secondary.data_to_send()
    primary_b = tp.PrimarySession(KEY, b"b" * 32, GROUP)  # a different nonce
    primary_b.start()
    with pytest.raises(tp.AuthenticationError):
        _pump(secondary, primary_b, challenge)


def test_sending_a_frame_the_state_does_not_allow_is_our_bug() -> None:
    primary = tp.PrimarySession(KEY, b"p" * 32, GROUP)
    with pytest.raises(tp.LocalProtocolError):
        primary.send(tp.Unlink(seq=1, path=b"a"))
    secondary = tp.SecondarySession(KEY, b"s" * 32)
    with pytest.raises(tp.LocalProtocolError):
        secondary.send(tp.Ack(seq=1))


def test_close_handshake_ends_in_closed() -> None:
    primary, secondary = _handshake()
    _pump(primary, secondary, primary.send(tp.Close(last_seq=0)))
    assert secondary.state is tp.SessionState.CLOSING
    _pump(secondary, primary, secondary.send(tp.Close(last_seq=0)))
    assert primary.state is secondary.state is tp.SessionState.CLOSED


def test_short_keys_are_refused() -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.SecondarySession(b"short", b"s" * 32)


def test_a_challenge_with_a_wrong_proof_is_refused() -> None:
    primary = tp.PrimarySession(KEY, b"p" * 32, GROUP)
    primary.start()
    with pytest.raises(tp.AuthenticationError):
        _pump(primary, primary, tp.encode(Challenge(nonce=b"s" * 32, proof=b"\0" * 32)))
