"""glibc malloc's arena limit for the long-running daemon.

glibc gives each thread that allocates its own malloc arena, up to eight per core. TensorFlow's
and the scheduler's threads then each keep freed memory in their own arena, and the daemon's RSS
grows over weeks: a 1,000-job soak (bench/soak.py) grew ~2 MB per 100 jobs plus a one-time step
of ~50 MB, and with two arenas it stayed flat (+0.7 MB per 100 jobs, no step). The daemon sets
the limit itself, before TensorFlow starts its threads, so a user need not know about it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

DAEMON_ARENAS = 2
M_ARENA_MAX = -8  # from glibc's malloc.h


def limit_malloc_arenas(arenas: int = DAEMON_ARENAS) -> bool:
    """Cap glibc malloc at `arenas` arenas for the threads that allocate from now on.

    Returns False (and changes nothing) where the C library is not glibc, or where the user set
    MALLOC_ARENA_MAX: glibc already applied theirs at start and it wins."""
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError) as exc:
        log.warning("could not limit malloc arenas (%s): memory may grow slowly over weeks", exc)
        return False
