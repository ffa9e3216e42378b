"""pfl.allocator: glibc's mmap threshold fixed for the run's process, checked against glibc's own
accounting of mmapped blocks (mallinfo2), in fresh interpreters."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import pytest

from pfl import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL("libc.so.6") if GLIBC else None, "mallinfo2"),
                                 reason="glibc with mallinfo2 (2.33+) only")

# Blocks of 2, 6 and 6 MiB, each freed before the next. glibc's defaults: the 2 MiB block is mmapped
# (over 128 KiB), and each free raises the dynamic threshold to the block's size, so the second
# 6 MiB block comes from the heap. With the threshold fixed at 4 MiB: 2 MiB from the heap, both
# 6 MiB blocks mmapped.
PROBE = r"""
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fix":
    from pfl.allocator import fix_mmap_threshold
    assert fix_mmap_threshold()
before = libc.mallinfo2().hblks  # the interpreter's own mmapped blocks
mapped = []
for mib in (2, 6, 6):
    block = libc.malloc(mib * 1024 * 1024)
    mapped.append(libc.mallinfo2().hblks - before)
    libc.free(block)
print(*mapped)
"""


def _probe(mode: str) -> tuple[int, ...]:
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_KEYS and k != "PFL_MALLOC_TUNE"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True)
    return tuple(map(int, out.stdout.split()))


@needs_glibc
def test_fixed_threshold_keeps_large_blocks_mmapped_after_one_is_freed():
    assert _probe("default") == (1, 1, 0)
    assert _probe("fix") == (0, 1, 1)


def test_left_alone_where_the_user_tuned_malloc_or_turned_it_off(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: calls.append(name))
    for key, value in (("MALLOC_MMAP_THRESHOLD_", "131072"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1"),
                       ("PFL_MALLOC_TUNE", "0")):
        with monkeypatch.context() as m:
            m.setenv(key, value)
            assert allocator.fix_mmap_threshold() is False
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", ""))
    assert allocator.fix_mmap_threshold() is False
    assert calls == []  # libc never opened


def test_every_run_fixes_the_threshold_first(synthetic_db, tmp_path, monkeypatch):
    import torch
    from compose import make_cfg

    from pfl.run import train

    calls = []
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda: calls.append("fixed"))
    before = torch.get_num_threads()
    try:
        train(make_cfg(synthetic_db, tmp_path, "federation.rounds=1"))
    finally:
        torch.set_num_threads(before)
    assert calls == ["fixed"]
