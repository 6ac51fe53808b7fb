"""Shared fixtures: a tiny model, random batches, and one tiny trained run for the CLI tests.

Compiled programs go to a persistent cache made for this test session, so the many
train.py / eval.py subprocesses compile each tiny program once, and a run starts from an
empty cache like a fresh clone does. XLA compiles without LLVM's optimizations (here and in
every subprocess): the same programs compile ~40% faster and run slower, which the tests'
tiny models do not notice. `make bench` never runs under it; the tests that compare a
compiled program with another kind of program bit for bit use production_env().
"""

import atexit
import gzip
import os
import shutil
import subprocess
import sys
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # (pytest-xdist workers inherit it)
    _CACHE = tempfile.mkdtemp(prefix='transformer-tests-jax-cache-')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Programs that take a while to compile (train steps, decoders), not every eager op.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# CPU only, here and in subprocesses (libtpu, installed for the TPU compile checks, would
# otherwise look for a TPU at every start).
os.environ['JAX_PLATFORMS'] = 'cpu'
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
jax.config.update('jax_platforms', 'cpu')

from configs.common import ARCH_PRESETS  # noqa: E402
from transformer.decoder_only import DecoderOnly  # noqa: E402
from transformer.model import EncoderDecoder, ModelConfig  # noqa: E402

VOCAB = 40
# Today's block, every switch at once, for the tiny model's 4 heads: pre-RMSNorm, rotary
# positions, SwiGLU, grouped-query attention with 2 K/V heads, QK-norm, no biases.
MODERN = dict(ARCH_PRESETS['modern'], num_kv_heads=2)


def make_model(seed: int = 0, vocab_size: int = VOCAB, **overrides):
    """A tiny model; ``overrides`` set ModelConfig fields (dropout off unless given), and
    ``architecture='decoder_only'`` makes it a ``DecoderOnly``."""
    overrides.setdefault('dropout_rate', 0.0)
    cfg = ModelConfig.make('tiny', vocab_size, **overrides)
    model_class = DecoderOnly if cfg.architecture == 'decoder_only' else EncoderDecoder
    return model_class(cfg, rngs=nnx.Rngs(seed))


class Compiled:
    """A model whose array methods run compiled whole: an eager call compiles each of its
    operations separately (seconds per new shape), a jitted one compiles once. Other
    attributes (``cfg``, ``init_cache``) are the model's own; ``.module`` is the model."""

    METHODS = ('__call__', 'encode', 'cross_kv', 'decode_step', 'cross_attention_weights')
    _jitted = {}

    def __init__(self, module):
        self.module = module

    def _method(self, name):
        if name not in Compiled._jitted:
            Compiled._jitted[name] = nnx.jit(lambda m, *a, **k: getattr(m, name)(*a, **k))
        return lambda *a, **k: Compiled._jitted[name](self.module, *a, **k)

    def __call__(self, *args, **kwargs):
        return self._method('__call__')(*args, **kwargs)

    def __getattr__(self, name):
        return self._method(name) if name in self.METHODS else getattr(self.module, name)


def assert_packing_keeps_examples_apart(model, rng: np.random.Generator) -> None:
    """Two examples packed in one row (with a padding slot) give each the logits it has alone."""
    a_src, b_src = rng.integers(4, VOCAB, 3), rng.integers(4, VOCAB, 4)
    a_tgt, b_tgt = rng.integers(4, VOCAB, 5), rng.integers(4, VOCAB, 2)
    packed_src = np.concatenate([a_src, b_src, [0]])[None].astype(np.int32)
    packed_tgt = np.concatenate([a_tgt, b_tgt, [0]])[None].astype(np.int32)
    src_seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32)
    tgt_seg = np.array([[1, 1, 1, 1, 1, 2, 2, 0]], np.int32)
    src_pos = np.array([[0, 1, 2, 0, 1, 2, 3, 0]], np.int32)
    tgt_pos = np.array([[0, 1, 2, 3, 4, 0, 1, 0]], np.int32)
    packed = model(packed_src, packed_tgt, src_seg, tgt_seg, src_pos, tgt_pos)
    alone_a = model(a_src[None].astype(np.int32), a_tgt[None].astype(np.int32))
    alone_b = model(b_src[None].astype(np.int32), b_tgt[None].astype(np.int32))
    np.testing.assert_allclose(packed[0, :5], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(packed[0, 5:7], alone_b[0], atol=1e-5)


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


# -- the entry points, run as a user runs them -------------------------------------------

def command(script: str, *args) -> list[str]:
    return [sys.executable, os.path.join(ROOT, script), *args]


def run(script: str, *args, check: bool = True, input: str | None = None,
        timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``python script args`` from the repository root; raises with its output on
    failure unless ``check`` is False."""
    result = subprocess.run(command(script, *args), cwd=ROOT, capture_output=True, text=True,
                            input=input, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} {args} failed:\n{result.stdout[-3000:]}\n'
                             f'{result.stderr[-3000:]}')
    return result


def tiny(data_dir, workdir, *extra) -> list[str]:
    """Arguments of the tiny numbers config into ``workdir``, data in ``data_dir``."""
    return ['--config', 'configs/default.py:tiny', '--workdir', str(workdir),
            f'--config.data.data_dir={data_dir}', *extra]


def train(data_dir, workdir, *extra, env: dict | None = None):
    """train.py on the tiny config; the finished process (not checked)."""
    return run('train.py', *tiny(data_dir, workdir, *extra), check=False, env=env)


def production_env() -> dict:
    """The environment without the tests' fast-compile flag: XLA as training runs it."""
    flags = os.environ.get('XLA_FLAGS', '').replace(FAST_COMPILE, '').strip()
    return dict(os.environ, XLA_FLAGS=flags)


def steps_in(workdir) -> list[int]:
    """The steps of the checkpoints in ``workdir``."""
    path = os.path.join(workdir, 'checkpoints')
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    """One TFDS data_dir for the session: the tiny numbers task is prepared once."""
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def trained(tmp_path_factory, data_dir):  # tests using it: @pytest.mark.xdist_group('trained')
    """A tiny run trained for 10 steps, then resumed to 20 with steps 13-14 profiled:
    (workdir, checkpoints after the first run, the second run's output). Tests that change
    files use a copy."""
    workdir = tmp_path_factory.mktemp('run')
    run('train.py', *tiny(data_dir, workdir, '--config.train.num_steps=10'))
    checkpoints_after_first = sorted(os.listdir(workdir / 'checkpoints'))
    second = run('train.py', *tiny(data_dir, workdir, '--config.train.num_steps=20',
                                   '--config.train.profile_start=12',
                                   '--config.train.profile_steps=2'))
    return workdir, checkpoints_after_first, second


def load_config(spec: str):
    """The config of ``spec`` (e.g. 'configs/multi30k.py:reverse=True') as train.py loads it."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', f'{ROOT}/{spec}', flag_values=flag_values)
    flag_values(['prog'])
    return flag_values.config


# -- a Multi30k stand-in: the raw file layout, three pairs ---------------------------------

EN = ['A dog runs.', 'Two men talk.', 'A red car.']
DE = ['Ein Hund rennt.', 'Zwei Männer reden.', 'Ein rotes Auto.']


def write_multi30k_raw(folder, en=EN, de=DE):
    """The six gzip files of Multi30k's raw layout in ``folder``, each split holding en/de."""
    from transformer.datasets.multi30k import SPLITS
    folder.mkdir(parents=True, exist_ok=True)
    for stem in SPLITS.values():
        for lang, lines in (('en', en), ('de', de)):
            with gzip.open(folder / f'{stem}.{lang}.gz', 'wt', encoding='utf-8') as f:
                f.write(''.join(line + ' \n' for line in lines))  # trailing space is stripped
    return folder

