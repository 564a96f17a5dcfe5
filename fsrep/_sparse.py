"""Holes in files: where the data is (SEEK_DATA/SEEK_HOLE), and making a
range read as zeros without allocating it (fallocate PUNCH_HOLE). Both
sides of every resync use these, so a sparse file stays sparse on the
replica and a hole of any size costs a few system calls, never a read or
a write of its zeros.

Also the other libc calls the os module lacks (renameat2, syncfs,
getdents64, and utimensat with UTIME_OMIT: an mtime set without touching the atime),
and two small helpers over it that both sides need: a pwrite of every byte
(``pwrite_all``) and the path that names a descriptor's inode (``proc_path``).
And a file's copy that shares its extents where the file system can
(``clone_data``: FICLONE, else copy_file_range of the data only).

Caveats:
- A filesystem without SEEK_DATA reports the whole file as data; one
  without hole punching gets zeros written over the data it holds in the
  range (never over its holes), so the cost stays bounded by its data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import sys
from collections.abc import Iterator

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_libc.getdents64.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
_libc.getdents64.restype = ctypes.c_ssize_t
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(1024 * 1024)
_AT_SYMLINK_NOFOLLOW = 0x100
_UTIME_OMIT = (1 << 30) - 2
_TIMES = ctypes.c_long * 4  # struct timespec[2]: atime, mtime
_libc.utimensat.argtypes = (ctypes.c_int, ctypes.c_char_p, _TIMES, ctypes.c_int)
_libc.futimens.argtypes = (ctypes.c_int, _TIMES)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def renameat2(src_dir: int, src: bytes, dst_dir: int, dst: bytes, flags: int) -> None:
    """rename with RENAME_NOREPLACE / RENAME_EXCHANGE (not in the os module)."""
    _check(_libc.renameat2(src_dir, src, dst_dir, dst, flags), "renameat2")


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding *fd* (not in the os module)."""
    _check(_libc.syncfs(fd), "syncfs")


def getdents64(fd: int, size: int) -> bytes:
    """The next directory records of *fd* from its position on, at most
    *size* bytes of ``struct linux_dirent64``; b"" at the end. The os
    module reads a directory only whole (scandir), never from an offset."""
    buf = ctypes.create_string_buffer(size)
    got = _libc.getdents64(fd, buf, size)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"getdents64: {os.strerror(err)}")
    return buf.raw[:got]


def set_mtime(fd: int, name: bytes | None, mtime_ns: int) -> None:
    """Set the mtime of entry *name* of directory *fd* — never through a
    symlink: a symlink's own — or, with *name* None, of the file *fd*
    (not an O_PATH descriptor) to *mtime_ns*; the atime stays as it is."""
    seconds, nanoseconds = divmod(mtime_ns, 1_000_000_000)
    times = _TIMES(0, _UTIME_OMIT, seconds, nanoseconds)
    if name is None:
        _check(_libc.futimens(fd, times), "futimens")
    else:
        _check(_libc.utimensat(fd, name, times, _AT_SYMLINK_NOFOLLOW), "utimensat")


def next_data(fd: int, offset: int) -> tuple[int, int] | None:
    """(first, end) of the first stretch of data of *fd* at or after
    *offset* — *end* is where the next hole starts, however far — or None
    when only holes follow. A filesystem without SEEK_DATA is all data.

    Caveat: tmpfs finds a hole by looking at every page up to it, so a
    caller that asks many times within one stretch keeps the answer."""
    try:
        first = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only holes from here to the end
            return None
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        size = os.fstat(fd).st_size
        return (offset, size) if offset < size else None
    return first, os.lseek(fd, first, os.SEEK_HOLE)


def data_segments(fd: int, start: int, stop: int) -> Iterator[tuple[int, int]]:
    """(first, end) of each stretch of data of *fd* within [start, stop),
    in order; what lies between is a hole (or past the end of the file).
    Lazy: a caller that stops early pays only for what it looked at."""
    offset = start
    while offset < stop:
        found = next_data(fd, offset)
        if found is None or found[0] >= stop:
            return
        yield found[0], min(found[1], stop)
        offset = found[1]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of *data* at *offset* of *fd*: pwrite(2) may write less
    than it was given (a signal, a large buffer) and says how much.

    Raises:
        OSError: as pwrite(2); the bytes written before it stay written.
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def proc_path(fd: int) -> str:
    """A path naming exactly the inode *fd* refers to (even an O_PATH fd)."""
    return f"/proc/self/fd/{fd}"


def punch(fd: int, offset: int, length: int) -> None:
    """Make bytes offset..offset+length of *fd* read as zeros, leaving its
    size alone: the data there is punched out (or overwritten with zeros
    where the filesystem cannot punch); holes are left as they are."""
    for first, end in list(data_segments(fd, offset, offset + length)):
        if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, first, end - first) == 0:
            continue
        err = ctypes.get_errno()
        if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(err, f"fallocate(PUNCH_HOLE): {os.strerror(err)}")
        for at in range(first, end, len(_ZEROS)):
            pwrite_all(fd, memoryview(_ZEROS)[:min(len(_ZEROS), end - at)], at)


FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long), linux/fs.h: the inode's generation


def generation(fd: int) -> int | None:
    """The generation of *fd*'s inode — what tells an inode from a later
    one given the same number — or None where the file system keeps none."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, FS_IOC_GETVERSION, buf, True)
    except OSError:
        return None
    return int.from_bytes(buf, sys.byteorder)
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EPERM)
_NO_KERNEL_COPY = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EINVAL)
COPY_CHUNK = 64 * 1024 * 1024  # a copy_file_range call: bounded, so a huge file is never one system call


SLOWEST_COPY = 16 * 1024 * 1024  # bytes/s a clone without reflinks is allowed to copy at, on a slow disk


def clone_seconds(size: int) -> float:
    """How long a clone of *size* bytes may take without reflinks: what the
    primary waits for its acknowledgement beyond the ack timeout."""
    return size / SLOWEST_COPY


def clone_data(src: int, dst: int) -> bool:
    """Make empty file *dst* hold what *src* holds, holes kept: a reflink
    (no data copied; True) where the file system has them, else its data
    stretches copied in the kernel (False)."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return True
    except OSError as exc:
        if exc.errno not in _NO_REFLINK:
            raise
    size = os.fstat(src).st_size
    copy_span(src, dst, 0, size)
    os.ftruncate(dst, size)
    return False


def copy_span(src: int, dst: int, start: int, stop: int, *, holes: bool = False) -> int:
    """Copy bytes start..stop of *src* to the same place of *dst*, its
    holes skipped — and, with *holes*, punched in *dst* (which held other
    data there); the bytes of data copied. A source shorter than *stop*
    ends the copy where it ends."""
    copied, at = 0, start
    for first, end in data_segments(src, start, stop):
        if holes and first > at:
            punch(dst, at, first - at)
        offset = first
        while offset < end:
            n = _copy_range(src, dst, min(COPY_CHUNK, end - offset), offset)
            if not n:
                return copied  # shorter than it was
            offset += n
            copied += n
        at = end
    if holes and stop > at:
        punch(dst, at, stop - at)
    return copied


def _copy_range(src: int, dst: int, length: int, offset: int) -> int:
    try:
        return os.copy_file_range(src, dst, length, offset, offset)
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    data = os.pread(src, min(length, 1024 * 1024), offset)
    pwrite_all(dst, data, offset)
    return len(data)
