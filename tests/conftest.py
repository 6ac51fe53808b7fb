"""Shared fixtures: a tiny model and random batches. Everything runs on CPU in seconds."""

import os
import sys
import tempfile

# Compiled programs are cached on disk for the whole session, so the many train.py
# subprocesses of the end-to-end and fault tests compile the tiny model once.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'transformer-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
jax.config.update('jax_platforms', 'cpu')

from transformer.model import EncoderDecoder, ModelConfig  # noqa: E402

VOCAB = 40


def make_model(seed: int = 0, vocab_size: int = VOCAB, **overrides) -> EncoderDecoder:
    """A tiny model; ``overrides`` set ModelConfig fields (dropout off unless given)."""
    overrides.setdefault('dropout_rate', 0.0)
    cfg = ModelConfig.make('tiny', vocab_size, **overrides)
    return EncoderDecoder(cfg, rngs=nnx.Rngs(seed))


def random_tokens(rng: np.random.Generator, batch: int, length: int, *,
                  min_len: int = 1) -> np.ndarray:
    """[batch, length] ids in [4, VOCAB), each row 0-padded after a random length."""
    tokens = rng.integers(4, VOCAB, (batch, length)).astype(np.int32)
    lengths = rng.integers(min_len, length + 1, batch)
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return tokens


@pytest.fixture
def rng():
    return np.random.default_rng(0)
