"""Per-platform settings, decided here and applied by the entry points before any work.

The random-bit generator behind dropout (``jax_default_prng_impl``). Measured on a 2-core
AMD EPYC with AVX-512 (docs/experiments.md), the byte dropout of a small step's 17 sites
takes 39.7 ms with threefry, 45.6 ms with 'rbg' and 44.2 ms with 'unsafe_rbg': threefry
on a CPU. GPUs and TPUs keep threefry too until measured there (``benchmarks/accelerator.py``
times all three on a GPU): the invariants the tests prove (a sharded step equals the
one-device step, a run moves between host counts with the same masks) hold for threefry,
whose bits do not depend on how arrays are split.

No XLA:CPU flags are set: measured on the small and base mixed-precision train steps
(``make bench CASES=xla_flags_``, table in the README), the defaults were the fastest or
within 1% of the fastest set. YNNPACK runs the matmuls by default; switching it off doubles
the step, and the XNNPACK and oneDNN flags then leave the matmuls to XLA's own (Eigen) code
-- the PyPI jaxlib 0.10.2 does not fuse into either, and oneDNN's dot fusion fails to compile.
What did pay on a CPU is the form of the bfloat16 matmuls (``layers.dot``), decided where the
matmul is traced.
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
