"""How long a group's client changes waited for the secondary: from
``split()`` to the ack, kept the way Prometheus keeps a histogram (fixed
bucket bounds, a count per bucket and a sum), so ``--metrics`` exposes it
as it is and a dashboard can ask for any quantile across groups and hosts.

Sans-IO and cheap: it runs for every acknowledged change, so an
observation is a bisection of a fixed tuple, one list increment and one
addition — nothing is allocated per change.
"""

from __future__ import annotations

import bisect
import math

# Seconds: a fast local link acknowledges in tens of microseconds; the ack
# timeout (10 s by default) ends the wait long before the last bound matters.
BOUNDS: tuple[float, ...] = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                             0.25, 0.5, 1.0, 2.5, 5.0)


class Latencies:
    """A histogram of waits, in seconds, over the life of the daemon."""

    __slots__ = ("_counts", "sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(BOUNDS) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one wait of *seconds* (in the first bucket whose bound is
        at least that, as Prometheus's ``le`` reads)."""
        self._counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[float, int]]:
        """Each bound with how many waits were at most that long, ending
        with ``(inf, count)``: cumulative, as the exposition wants them."""
        out, total = [], 0
        for bound, n in zip((*BOUNDS, math.inf), self._counts, strict=True):
            total += n
            out.append((bound, total))
        return out
