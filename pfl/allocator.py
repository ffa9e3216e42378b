"""glibc malloc's mmap threshold, fixed at 4 MiB for the run's process (and its forked workers).

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
blocks of that size come from the heap arenas instead of their own mappings, and the arenas
keep what they grow to. Evaluating the per-patient federation with the CNN-LSTM made the RSS of
one run climb by about 60 MB every half second, in some runs and not in others, to a peak of
2.5-2.8 GB against 1.0 GB (BENCHMARKS.md section 5; `experiment=patient_specific`, 2 rounds, three
fresh processes each). A fixed threshold turns the adjustment off: 4 MiB kept every run at
1.0 GB with no slower rounds, while glibc's 128 KiB minimum made rounds twice as slow (every
activation its own mapping and page faults). Setting it with `mallopt` is what
`MALLOC_MMAP_THRESHOLD_=4194304` in the environment does before the process starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
THRESHOLD = 4 * 1024 * 1024
#: where the user has tuned glibc malloc themselves, pfl leaves it alone
USER_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
             "GLIBC_TUNABLES")

_done = False


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold once per process; True if set now or before. A no-op (False)
    off glibc, where the user tuned malloc through the environment, or with PFL_MALLOC_TUNE=0."""
    global _done
    if _done:
        return True
    if os.environ.get("PFL_MALLOC_TUNE", "1") == "0" or any(k in os.environ for k in USER_KEYS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(THRESHOLD)) == 1
    except (OSError, AttributeError):
        return False
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) refused", THRESHOLD)
    _done = ok
    return ok
