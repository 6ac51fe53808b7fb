"""Per-platform settings, decided here and applied by the entry points before any work.

The random-bit generator behind dropout (``jax_default_prng_impl``). Measured on a 2-core
AMD EPYC with AVX-512 (docs/experiments.md), the byte dropout of a small step's 17 sites
takes 39.7 ms with threefry, 45.6 ms with 'rbg' and 44.2 ms with 'unsafe_rbg': threefry
on a CPU. GPUs and TPUs keep threefry too until measured there (``benchmarks/accelerator.py``
times all three on a GPU): the invariants the tests prove (a sharded step equals the
one-device step, a run moves between host counts with the same masks) hold for threefry,
whose bits do not depend on how arrays are split.
"""

from __future__ import annotations

import jax

PRNG_IMPL = {'cpu': 'threefry2x32', 'gpu': 'threefry2x32', 'tpu': 'threefry2x32'}


def configure(platform: str | None = None) -> dict:
    """Applies the settings of ``platform`` (default: this process's backend); returns them."""
    platform = platform or jax.default_backend()
    settings = {'jax_default_prng_impl': PRNG_IMPL.get(platform, 'threefry2x32')}
    for name, value in settings.items():
        jax.config.update(name, value)
    return settings
