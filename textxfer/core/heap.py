"""Give memory that large-data steps freed back to the operating system.

Reading a million rows in chunks, hashing, sorting and tokenising them allocate and free hundreds of megabytes of
small blocks. glibc's allocator keeps freed blocks in its heap for reuse, and Arrow's pool keeps what its arrays
freed, so the process's resident memory stays near the peak of the reading long after the data became a
memory-mapped file and a few arrays. `release_unused_memory` hands both back (glibc: `malloc_trim`; Arrow:
`release_unused`), so that what a run holds afterwards is what it uses. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    """The C library, or None where it cannot be found or loaded."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library is not glibc (macOS, musl, Windows)."""
    return getattr(_libc(), "malloc_trim", None)


def trim_heap() -> None:
    """Return the C heap's free blocks to the operating system (glibc's `malloc_trim`; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_unused_memory() -> None:
    """Return the heap's free blocks and Arrow's unused pool memory to the operating system (a few milliseconds;
    call it after a step that allocated and freed much, not in a loop)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim_heap()


# ------------------------------------------------------------------------------------------ mapped files

MADV_DONTNEED = 4
"""Linux `madvise` advice: the range's pages leave the process; a file mapping's pages stay in the page cache."""


@functools.cache
def _madvise():
    """The C library's `madvise`, or None where there is none (or it is not Linux's)."""
    import sys

    fn = getattr(_libc(), "madvise", None) if sys.platform.startswith("linux") else None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def read_only_file_mappings(arrays) -> list[tuple[int, int]]:
    """The memory mappings (start, end addresses) that hold `arrays` (numpy arrays), each a read-only mapping of a
    file, as /proc/self/maps lists them; empty when any array lies elsewhere (owned memory, a writable or private
    copy-on-write mapping) or off Linux. Only such mappings may have their pages dropped: what the kernel drops
    there it reads back from the file, unchanged. Dropping pages of owned memory would zero them."""
    if _madvise() is None:
        return []
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            maps = []
            for line in f:
                parts = line.split(maxsplit=5)
                start, end = (int(x, 16) for x in parts[0].split("-"))
                readonly_file = len(parts) == 6 and parts[5].startswith("/") and "w" not in parts[1]
                maps.append((start, end, readonly_file))
    except OSError:
        return []
    found: set[tuple[int, int]] = set()
    for a in arrays:
        if a.nbytes == 0:
            continue
        lo = a.__array_interface__["data"][0]
        hi = lo + a.nbytes
        holder = next(((s, e) for s, e, ok in maps if ok and s <= lo and hi <= e), None)
        if holder is None:
            return []
        found.add(holder)
    return sorted(found)


def drop_resident_pages(mappings: list[tuple[int, int]]) -> None:
    """Take the pages of read-only file `mappings` (from `read_only_file_mappings`, whose arrays the caller still
    holds: they keep the mapping in place) out of the process's resident memory. The pages stay in the page cache:
    the next read of one is a minor fault, not a disk read. Reading rows of a memory-mapped token file at random
    maps a page (and the kernel's fault-around neighbours) per row read, so without this a training over a large
    file ends with most of the file resident in the process."""
    fn = _madvise()
    for start, end in mappings:
        fn(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)
