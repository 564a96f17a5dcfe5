"""Fixed-size regions of a file and sets of them.

A region number is ``offset // region_size``. Sets are roaring bitmaps,
whose values are 32-bit: a file with more regions than that raises
RegionOverflow rather than wrapping silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import xxhash
from roaringbitmap import RoaringBitmap

REGION_SIZE = 4096
MAX_REGIONS = 2**32


def region_digests(data: bytes, count: int) -> bytes:
    """The xxh3-64 digest of each of *count* regions of *data* (which starts
    at a region boundary), 8 bytes each, big-endian; a region past the end
    of *data* digests as empty. Both sides of a checksum resync use this, so
    equal digests mean equal regions."""
    view = memoryview(data)
    return b"".join(xxhash.xxh3_64_digest(view[i * REGION_SIZE:(i + 1) * REGION_SIZE]) for i in range(count))


class RegionOverflow(ValueError):
    """Raised when an offset lies beyond the last region a bitmap can hold;
    use a larger region size for such files."""


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


class RegionSet:
    """A set of region numbers of one file."""

    def __init__(self) -> None:
        self._bitmap = RoaringBitmap()

    def add(self, regions: RegionRange) -> None:
        if regions.count:
            self._bitmap.update(range(regions.first, regions.stop))

    def discard(self, regions: RegionRange) -> None:
        if regions.count:
            self._bitmap.difference_update(range(regions.first, regions.stop))

    def __contains__(self, region: int) -> bool:
        return region in self._bitmap

    def __len__(self) -> int:
        return len(self._bitmap)

    def ranges(self) -> Iterator[RegionRange]:
        """Maximal runs of consecutive regions, in order."""
        start = prev = -1  # no run yet
        for r in self._bitmap:
            if start < 0:
                start = prev = r
            elif r == prev + 1:
                prev = r
            else:
                yield RegionRange(start, prev - start + 1)
                start = prev = r
        if start >= 0:
            yield RegionRange(start, prev - start + 1)
