"""Per-platform settings, decided here and applied by the entry points before any work.

The random-bit generator behind dropout (``jax_default_prng_impl``): on a TPU the
hardware generator ('unsafe_rbg', as T5X sets for TPU training) instead of threefry hashes
computed in vector units; on a CPU and a GPU threefry, which the benchmark cases
``dropout_masks`` (CPU) and ``base_xla_none_<impl>`` of ``benchmarks/accelerator.py`` (GPU)
compare with the others. A run's dropout masks and initial weights then differ between
platforms of the same seed (each platform is reproducible on its own), never between
processes or restarts of one run.
"""

from __future__ import annotations

import jax

PRNG_IMPL = {'cpu': 'threefry2x32', 'gpu': 'threefry2x32', 'tpu': 'unsafe_rbg'}


def configure() -> dict:
    """Applies this platform's settings; returns them (for the run record)."""
    settings = {'jax_default_prng_impl': PRNG_IMPL.get(jax.default_backend(), 'threefry2x32')}
    for name, value in settings.items():
        jax.config.update(name, value)
    return settings
