"""Shared fixtures: a tiny model and random batches. Everything runs on CPU in seconds."""

import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
jax.config.update('jax_platforms', 'cpu')

from transformer.model import EncoderDecoder, ModelConfig  # noqa: E402

VOCAB = 40


def make_model(seed: int = 0, **overrides) -> EncoderDecoder:
    """A tiny model; ``overrides`` set ModelConfig fields (dropout off unless given)."""
    overrides.setdefault('dropout_rate', 0.0)
    cfg = ModelConfig.make('tiny', VOCAB, **overrides)
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
