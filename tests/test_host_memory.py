"""Importing the package makes glibc keep freed memory: a reused block costs no page faults."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT

# Allocates, fills and frees a 64 MiB block 5 times; prints the minor page faults of the last 4.
PROBE = """
import ctypes, resource, transformer
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 << 20
for i in range(5):
    if i == 1:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(transformer.MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(**env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt is glibc-only')
def test_freed_blocks_are_reused_without_page_faults():
    tuned, tuned_faults = faults(TRANSFORMER_MALLOC_DEFAULTS='0')
    default, default_faults = faults(TRANSFORMER_MALLOC_DEFAULTS='1')
    assert (tuned, default) == ('True', 'False')
    # glibc's default maps every 64 MiB block afresh: >= 32 faults each even with 2 MiB pages.
    assert default_faults >= 4 * 32
    assert tuned_faults < 32
