"""Fixed-size regions of a file and sets of them.

A region number is ``offset // region_size``; offsets are 64-bit, so a
file has at most MAX_REGIONS regions (2**52 at 4 KiB), and a region past
that raises RegionOverflow rather than wrapping silently.

How a RegionSet works: roaring bitmaps hold 32-bit values, so the region
numbers are cut in chunks of 2**32 (16 TiB of file at 4 KiB regions), one
bitmap per chunk that holds any, keyed by the high bits. A chunk that is
wholly in the set is kept as FULL, not as a bitmap: a truncate to a petabyte
costs a few dict entries, not gigabytes. Every operation works on ranges —
the bitmaps' own range operations, runs found by rank arithmetic — never
one Python step per region.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash
from pyroaring import BitMap

REGION_SIZE = 4096
MAX_REGIONS = 2**64 // REGION_SIZE
CHUNK_BITS = 32
CHUNK = 1 << CHUNK_BITS


def region_digests(data: bytes, count: int) -> bytes:
    """The xxh3-64 digest of each of *count* regions of *data* (which starts
    at a region boundary), 8 bytes each, big-endian; a region past the end
    of *data* digests as empty. Both sides of a checksum resync use this, so
    equal digests mean equal regions."""
    view = memoryview(data)
    return b"".join(xxhash.xxh3_64_digest(view[i * REGION_SIZE:(i + 1) * REGION_SIZE]) for i in range(count))


class RegionOverflow(ValueError):
    """Raised when a region lies beyond the last one a 64-bit offset can
    reach (MAX_REGIONS), or a range is negative."""


@dataclass(frozen=True, slots=True)
class RegionRange:
    """Regions ``first`` .. ``first + count - 1``."""

    first: int
    count: int

    def __post_init__(self) -> None:
        if self.first < 0 or self.count < 0 or self.first + self.count > MAX_REGIONS:
            raise RegionOverflow(f"regions {self.first}+{self.count} exceed {MAX_REGIONS}")

    @property
    def stop(self) -> int:
        return self.first + self.count

    def __str__(self) -> str:
        return f"regions[{self.first}..{self.stop})"


def regions_for(offset: int, length: int, region_size: int = REGION_SIZE) -> RegionRange:
    """The regions touched by *length* bytes at *offset* (none if length 0)."""
    if length <= 0:
        return RegionRange(min(offset // region_size, MAX_REGIONS), 0)
    first = offset // region_size
    last = (offset + length - 1) // region_size
    return RegionRange(first, last - first + 1)


class _Full:
    """A chunk wholly in the set."""

    def __repr__(self) -> str:
        return "FULL"


FULL = _Full()
_CHUNK_HEADER = struct.Struct(">Q?I")  # chunk key, wholly in the set, size of its bitmap
_Chunk = BitMap | _Full


class RegionSet:
    """A set of region numbers of one file (see the module docstring)."""

    def __init__(self) -> None:
        self._chunks: dict[int, _Chunk] = {}

    @staticmethod
    def _pieces(regions: RegionRange) -> Iterator[tuple[int, int, int]]:
        """(chunk, first, stop) of each chunk *regions* touch, first/stop
        within the chunk."""
        first, stop = regions.first, regions.stop
        while first < stop:
            key = first >> CHUNK_BITS
            base = key << CHUNK_BITS
            end = min(stop, base + CHUNK)
            yield key, first - base, end - base
            first = end

    def add(self, regions: RegionRange) -> None:
        for key, first, stop in self._pieces(regions):
            chunk = self._chunks.get(key)
            if chunk is FULL:
                continue
            if first == 0 and stop == CHUNK:
                self._chunks[key] = FULL
                continue
            if chunk is None:
                chunk = self._chunks[key] = BitMap()
            assert isinstance(chunk, BitMap)
            chunk.add_range(first, stop)
            if len(chunk) == CHUNK:
                self._chunks[key] = FULL

    def update(self, other: RegionSet) -> None:
        """Add every region of *other* (bitmap unions, chunk by chunk)."""
        for key, theirs in other._chunks.items():
            mine = self._chunks.get(key)
            if mine is FULL:
                continue
            if theirs is FULL:
                self._chunks[key] = FULL
            elif mine is None:
                assert isinstance(theirs, BitMap)
                self._chunks[key] = BitMap(theirs)
            else:
                assert isinstance(mine, BitMap)
                assert isinstance(theirs, BitMap)
                mine |= theirs
                if len(mine) == CHUNK:
                    self._chunks[key] = FULL

    def to_bytes(self) -> bytes:
        """The set in roaring's own serialization, chunk by chunk: compact
        and fast however scattered the regions are (a run list of a
        million isolated regions is ten times larger and slower)."""
        out = []
        for key in sorted(self._chunks):
            chunk = self._chunks[key]
            body = b"" if chunk is FULL else chunk.serialize()  # type: ignore[union-attr]
            out.append(_CHUNK_HEADER.pack(key, chunk is FULL, len(body)) + body)
        return b"".join(out)

    @classmethod
    def from_bytes(cls, blob: bytes) -> RegionSet:
        """Raises ValueError when *blob* is not one."""
        regions = cls()
        pos = 0
        try:
            while pos < len(blob):
                key, full, size = _CHUNK_HEADER.unpack_from(blob, pos)
                pos += _CHUNK_HEADER.size
                if key >= MAX_REGIONS >> CHUNK_BITS or len(blob) < pos + size:
                    raise ValueError("region chunk out of range or cut short")
                if full:
                    regions._chunks[key] = FULL
                else:
                    bitmap = BitMap.deserialize(blob[pos:pos + size])
                    if bitmap:
                        regions._chunks[key] = bitmap
                pos += size
        except (struct.error, TypeError) as exc:
            raise ValueError(f"not a region set: {exc}") from None
        return regions

    def discard(self, regions: RegionRange) -> None:
        for key, first, stop in self._pieces(regions):
            chunk = self._chunks.get(key)
            if chunk is None:
                continue
            if first == 0 and stop == CHUNK:
                del self._chunks[key]
                continue
            if chunk is FULL:
                chunk = self._chunks[key] = BitMap()
                chunk.add_range(0, CHUNK)
            assert isinstance(chunk, BitMap)
            chunk.remove_range(first, stop)
            if not chunk:
                del self._chunks[key]

    def __contains__(self, region: int) -> bool:
        chunk = self._chunks.get(region >> CHUNK_BITS)
        return chunk is FULL or (isinstance(chunk, BitMap) and (region & (CHUNK - 1)) in chunk)

    def __len__(self) -> int:
        return sum(len(chunk) if isinstance(chunk, BitMap) else CHUNK for chunk in self._chunks.values())

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def count(self, regions: RegionRange) -> int:
        """How many of *regions* are in the set."""
        total = 0
        for key, first, stop in self._pieces(regions):
            chunk = self._chunks.get(key)
            if chunk is FULL:
                total += stop - first
            elif chunk is not None:
                assert isinstance(chunk, BitMap)
                total += chunk.range_cardinality(first, stop)
        return total

    def overlaps(self, regions: RegionRange) -> bool:
        """Whether any of *regions* is in the set."""
        return self.count(regions) > 0 if regions.count else False

    def ranges(self, start: int = 0) -> Iterator[RegionRange]:
        """Maximal runs of consecutive regions at or after region *start*,
        in order (a run that began before *start* is cut there). Each run
        costs a few bitmap queries, however long it is."""
        run_first = run_stop = -1
        for key in sorted(k for k in self._chunks if (k + 1) << CHUNK_BITS > start):
            base = key << CHUNK_BITS
            for first, stop in _runs(self._chunks[key], max(0, start - base)):
                first += base
                stop += base
                if first == run_stop:  # continues across the chunk boundary
                    run_stop = stop
                    continue
                if run_stop > 0:
                    yield RegionRange(run_first, run_stop - run_first)
                run_first, run_stop = first, stop
        if run_stop > 0:
            yield RegionRange(run_first, run_stop - run_first)


def _runs(chunk: _Chunk, start: int) -> Iterator[tuple[int, int]]:
    """(first, stop) of each run of one chunk at or after *start*."""
    if chunk is FULL:
        yield start, CHUNK
        return
    assert isinstance(chunk, BitMap)
    rank = chunk.rank(start - 1) if start else 0  # values below start
    total = len(chunk)
    while rank < total:
        first = chunk[rank]
        # The run ends where the values stop being consecutive: the largest
        # stop with rank(stop - 1) - rank(first - 1) == stop - first, by doubling then halving.
        below = rank
        step = 1
        stop = first + 1
        while stop + step <= CHUNK and chunk.range_cardinality(first, stop + step) == stop + step - first:
            stop += step
            step *= 2
        while step > 1:
            step //= 2
            if stop + step <= CHUNK and chunk.range_cardinality(first, stop + step) == stop + step - first:
                stop += step
        yield first, stop
        rank = below + (stop - first)
