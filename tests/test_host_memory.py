"""host_memory.keep_freed_memory (called first by every entry point) makes glibc keep freed
memory, so a reused block costs no page faults; importing the package changes nothing."""

import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT

# Allocates, fills and frees a 64 MiB block 5 times; prints the minor page faults of the last 4.
PROBE = """
import ctypes, resource, sys, transformer.model
from transformer import host_memory
tuned = host_memory.keep_freed_memory() if sys.argv[1] == 'call' else False
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
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(call: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, '-c', PROBE, call], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt is glibc-only')
def test_freed_blocks_are_reused_without_page_faults():
    tuned, tuned_faults = faults('call', TRANSFORMER_MALLOC_DEFAULTS='0')
    opted_out, opted_out_faults = faults('call', TRANSFORMER_MALLOC_DEFAULTS='1')
    imported, imported_faults = faults('import only', TRANSFORMER_MALLOC_DEFAULTS='0')
    assert (tuned, opted_out, imported) == ('True', 'False', 'False')
    # glibc's default maps every 64 MiB block afresh: >= 32 faults each even with 2 MiB pages.
    assert opted_out_faults >= 4 * 32 and imported_faults >= 4 * 32
    assert tuned_faults < 32
