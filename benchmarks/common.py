"""Timing helpers shared by the benchmark cases."""

from __future__ import annotations

import resource
import statistics
import time


def median_seconds(fn, *, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    ``fn`` must block until its result is ready (jax.block_until_ready, or torch's eager
    execution on CPU).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def columns(rows: list) -> str:
    """Rows of cells as left-aligned text columns two spaces apart."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (each case runs in its own process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# name -> (variant, vocab, batch, src_len, tgt_len): the sizes the README's table reports.
TRAIN_SIZES = {'small': ('small', 8192, 64, 32, 32), 'base': ('base', 32000, 16, 64, 64)}
DECODE_SIZE = ('small', 8192, 64, 32, 32)  # 64 sentences, 32 source and 32 target tokens
