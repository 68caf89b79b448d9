"""Reads of file ranges that are not in the page cache, straight from the disk (O_DIRECT, Linux).

A buffered read of bytes that are not cached costs the kernel about as much CPU as recovery's arithmetic on them:
reading 40 ViT-B-sized files (13.6 GB) cold took 6.5-7.8 CPU-seconds of kernel time on a 2-core machine (page-cache
fills and copies), while O_DIRECT reads of the same bytes took 1.2 s (the disk writes into an aligned user buffer,
which is then copied where the caller wants it). Ranges that are mostly cached are read through the page cache as
usual (memory is faster than the disk), so a warm pass stays warm. Where O_DIRECT is missing (other systems, tmpfs,
some network file systems) `direct_capable` says so and the caller reads as usual.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import mmap
import os
import threading

import numpy as np

ALIGN = 4096          # O_DIRECT offsets, lengths and buffers aligned to this (any block size up to 4 KiB)
MIN_BYTES = 1 << 20   # smaller ranges are read buffered: their alignment padding is a large share
CHUNK = 8 << 20       # bytes per O_DIRECT request, through one reused buffer per thread
CACHED = 0.5          # a range with at least this share of its pages cached is read through the page cache

_scratch = threading.local()   # per-thread reusable aligned buffer (a cache, freed with its thread)


def direct_capable(fd: int) -> bool:
    """Whether the file system under `fd` takes O_DIRECT reads (the flag can be set and is cleared again)."""
    if not hasattr(os, "O_DIRECT") or _libc() is None:
        return False
    with _direct_flag(fd) as ok:
        return ok


def evict(path: str | os.PathLike) -> None:
    """Write a file's dirty pages and drop it from the page cache (posix_fadvise DONTNEED; no root needed), so that
    the next read comes from the disk: benchmarks and tests of cold reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _direct_flag(fd: int):
    """O_DIRECT set on `fd` inside the block (yields False, and sets nothing, where it is refused); the file's
    flags are restored after."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def cached_share(fd: int, offset: int, length: int) -> float:
    """Share (0..1) of the pages of bytes [offset, offset + length) of `fd` that are in the page cache (mincore of a
    read-only map of that range; mapping reads nothing). 1.0 where it cannot be told."""
    libc = _libc()
    if libc is None or length <= 0:
        return 1.0
    page = mmap.PAGESIZE
    start = offset - offset % page
    size = offset + length - start
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return 1.0
    try:
        pages = (size + page - 1) // page
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
            return 1.0
        return int(np.count_nonzero(np.frombuffer(vec, dtype=np.uint8) & 1)) / pages
    finally:
        libc.munmap(ctypes.c_void_p(addr), size)


def read_uncached(fd: int, offset: int, dest: memoryview) -> int | None:
    """Fill `dest` (bytes) from byte `offset` of `fd` with O_DIRECT when the range is large and mostly not cached.

    Returns the number of bytes filled (fewer than len(dest) only at the end of the file), or None when the range
    is small or cached, or O_DIRECT is refused: the caller then reads it as usual. `fd` must be direct_capable; its
    flags are restored before returning. Not for two threads reading the same `fd` at once.
    """
    n = dest.nbytes
    if n < MIN_BYTES or cached_share(fd, offset, n) >= CACHED:
        return None
    with _direct_flag(fd) as ok:
        return _read_direct(fd, offset, dest) if ok else None


def _read_direct(fd: int, offset: int, dest: memoryview) -> int | None:
    """read_uncached's reads, on an fd with O_DIRECT set: aligned CHUNK-byte requests through this thread's buffer."""
    n = dest.nbytes
    buf = _buffer()
    view = memoryview(buf)
    end = offset + n
    pos = offset - offset % ALIGN
    while pos < end:
        length = min(CHUNK, -(-(end - pos) // ALIGN) * ALIGN)
        try:
            got = os.preadv(fd, [view[:length]], pos)
        except OSError:   # a file system that accepts the flag but not the read: read it as usual
            return None
        lo, hi = max(offset, pos), min(end, pos + got)
        if hi > lo:
            dest[lo - offset:hi - offset] = view[lo - pos:hi - pos]
        if got < length:
            return max(hi - offset, 0)
        pos += length
    return n


def _buffer() -> mmap.mmap:
    """This thread's page-aligned CHUNK-byte buffer."""
    buf = getattr(_scratch, "buf", None)
    if buf is None:
        buf = _scratch.buf = mmap.mmap(-1, CHUNK)
    return buf


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library with mmap / mincore / munmap typed, or None where there is none to load."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return libc
