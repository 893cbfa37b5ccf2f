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
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library is not glibc (macOS, musl, Windows)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_unused_memory() -> None:
    """Return the heap's free blocks and Arrow's unused pool memory to the operating system (a few milliseconds;
    call it after a step that allocated and freed much, not in a loop)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
