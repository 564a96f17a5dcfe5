#!/usr/bin/env python3
"""A delay line between two TUN devices: every IP packet read from one is
written to the other DELAY later, in order. It stands in for
``tc qdisc ... netem delay``, which this kernel lacks (no sch_netem): two
network namespaces joined through it behave like hosts on a link with a
round-trip time of 2 x DELAY plus the relay's own overhead (measured and
reported by the harness).

It creates both devices in the namespace it runs in and prints ``ready``;
the caller then moves them into their namespaces (a TUN device keeps its
file descriptor across the move) and configures them. It runs until
SIGTERM. Packets are up to 64 KiB (the caller sets a large MTU), so the
relay handles a few thousand packets per second for hundreds of MB/s.

    bench/_delayline.py DEV_A DEV_B --delay-us 500
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65536


def open_tun(name: str) -> int:
    """A non-blocking file descriptor for a new TUN device *name* (no
    packet-information header: the reads are bare IP packets)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def drain(fd: int, queue: collections.deque[tuple[float, bytes]], due: float) -> None:
    """Move every packet waiting on *fd* into *queue*, each due at *due*."""
    while True:
        try:
            packet = os.read(fd, MAX_PACKET)
        except BlockingIOError:
            return
        if not packet:
            return
        queue.append((due, packet))


def deliver(fd: int, queue: collections.deque[tuple[float, bytes]], now: float) -> None:
    """Write the packets of *queue* that are due by *now*. A full device
    queue drops the packet, as a full link would; TCP resends it."""
    while queue and queue[0][0] <= now:
        _, packet = queue.popleft()
        try:
            os.write(fd, packet)
        except (BlockingIOError, OSError):
            pass


def relay(a: int, b: int, delay: float) -> None:
    """Forward a -> b and b -> a, each packet held *delay* seconds.

    A wake-up from select() comes 100-200 us late on this kind of machine,
    a large part of a 500 us delay; the relay keeps a running mean of that
    lateness and wakes that much early, so packets leave on time on average.
    """
    to_b: collections.deque[tuple[float, bytes]] = collections.deque()
    to_a: collections.deque[tuple[float, bytes]] = collections.deque()
    late = 0.0  # running mean of how late a timed wake-up comes
    while True:
        heads = [q[0][0] for q in (to_a, to_b) if q]
        wake = min(heads) - late if heads else None
        timeout = max(0.0, wake - time.monotonic()) if wake is not None else 1.0
        ready, _, _ = select.select([a, b], [], [], timeout)  # microseconds, unlike poll's milliseconds
        now = time.monotonic()
        if wake is not None and not ready and timeout > 0:
            late += (now - wake - late) / 16
        for fd in ready:
            drain(fd, to_b if fd == a else to_a, now + delay)
        deliver(b, to_b, now + late)
        deliver(a, to_a, now + late)


def fine_timers() -> None:
    """Timer slack 1 ns instead of 50 us (prctl PR_SET_TIMERSLACK)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dev_a")
    parser.add_argument("dev_b")
    parser.add_argument("--delay-us", type=int, default=500, help="one-way delay in microseconds (default 500)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fine_timers()
    a, b = open_tun(args.dev_a), open_tun(args.dev_b)
    print("ready", flush=True)
    try:
        relay(a, b, args.delay_us / 1e6)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
