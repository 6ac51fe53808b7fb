"""Configs: checked once, before anything is built, and turned into library objects here.

Unknown keys are refused by ml_collections itself (configs are locked ConfigDicts); wrong
types by its type-safe assignment. ``validate`` catches the bad *values*, each with a
message naming the key, the value and what would be valid. The builders below are the one
place a config becomes a model, an optimizer or a schedule.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import jax
import ml_collections
import optax
from flax import nnx

from transformer import datasets, optim, sharding
from transformer import model as model_lib
from transformer.decoder_only import DecoderOnly

log = logging.getLogger('transformer')


class ConfigError(ValueError):
    """A config value that cannot work; the message says which and why."""


def _check(ok: bool, key: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f'config.{key}={value!r} is invalid: {valid}.')


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` for the first bad value found."""
    m, d, t, e = config.model, config.data, config.train, config.eval
    try:  # the model's own fields are checked where they are defined
        model_config(config, vocab_size=max(d.vocab_size, 1))
    except ValueError as error:
        raise ConfigError(f'config.{error}') from None
    try:
        datasets.check_name(d.dataset)
    except ValueError as error:
        raise ConfigError(f'config.data.dataset={d.dataset!r} is invalid: {error}.') from None
    _check(d.vocab_size >= 16, 'data.vocab_size', d.vocab_size, 'expected at least 16')
    for key in ('max_source_length', 'max_target_length'):
        _check(d[key] >= 2, f'data.{key}', d[key], 'expected at least 2 (EOS/BOS included)')
        if m.positional == 'learned':
            _check(d[key] <= m.max_len, f'data.{key}', d[key],
                   f'learned positions cover only model.max_len={m.max_len}')
    if m.positional == 'learned':
        _check(e.max_decode_len <= m.max_len, 'eval.max_decode_len', e.max_decode_len,
               f'learned positions cover only model.max_len={m.max_len}')
        if m.architecture == 'decoder_only':  # the target's positions follow the source's
            longest = d.max_source_length + max(d.max_target_length, e.max_decode_len)
            _check(longest <= m.max_len, 'model.max_len', m.max_len,
                   f'a decoder-only sequence (source + target) reaches {longest} positions')
    _check(d.subword_nbest >= 1, 'data.subword_nbest', d.subword_nbest,
           'expected >= 1 (1 = always the best segmentation)')
    _check(d.subword_alpha >= 0, 'data.subword_alpha', d.subword_alpha, 'expected >= 0')
    _check(d.input_shards >= 0, 'data.input_shards', d.input_shards,
           'expected >= 0 (0 = one shard per process)')
    _check(t.batch_size > 0, 'train.batch_size', t.batch_size, 'expected a positive integer')
    _check(t.grad_accum_steps >= 1, 'train.grad_accum_steps', t.grad_accum_steps,
           'expected a positive integer (1 = no accumulation)')
    _check(t.num_steps > 0, 'train.num_steps', t.num_steps, 'expected a positive integer')
    _check(t.time_budget_minutes >= 0, 'train.time_budget_minutes', t.time_budget_minutes,
           'expected >= 0 (0 = train.num_steps decides)')
    _check(t.learning_rate > 0, 'train.learning_rate', t.learning_rate, 'expected > 0')
    _check(0 <= t.warmup_steps <= t.num_steps, 'train.warmup_steps', t.warmup_steps,
           f'expected 0 <= warmup_steps <= train.num_steps={t.num_steps}')
    _check(t.schedule in optim.SCHEDULES, 'train.schedule', t.schedule,
           f'expected one of {sorted(optim.SCHEDULES)}')
    if t.schedule == 'linear':
        _check(t.warmup_steps < t.num_steps, 'train.warmup_steps', t.warmup_steps,
               f'linear decay needs warmup_steps < train.num_steps={t.num_steps}')
    problem = optim.optimizer_problem(t.optimizer, t.optimizer_kwargs.to_dict())
    _check(problem is None, 'train.optimizer', t.optimizer, problem or '')
    _check(0.0 <= t.label_smoothing < 1.0, 'train.label_smoothing', t.label_smoothing,
           'expected 0 <= smoothing < 1')
    _check(t.rdrop_alpha >= 0, 'train.rdrop_alpha', t.rdrop_alpha, 'expected >= 0 (0 = off)')
    _check(not t.rdrop_alpha or max(m.dropout_rate, m.attention_dropout, m.token_dropout) > 0,
           'train.rdrop_alpha', t.rdrop_alpha,
           'R-Drop compares two dropout passes; it needs model.dropout_rate, '
           'model.attention_dropout or model.token_dropout > 0')
    _check(t.grad_clip_norm >= 0, 'train.grad_clip_norm', t.grad_clip_norm,
           'expected >= 0 (0 disables clipping)')
    _check(t.profile_steps >= 0, 'train.profile_steps', t.profile_steps, 'expected >= 0 (0 = off)')
    _check(t.profile_start >= 0, 'train.profile_start', t.profile_start, 'expected >= 0')
    for key in ('log_every', 'eval_every', 'eval_batches', 'checkpoint_every'):
        _check(t[key] > 0, f'train.{key}', t[key], 'expected a positive number of steps')
    if m.attention_impl == 'cudnn' and jax.default_backend() == 'gpu':
        _check(m.dtype in ('bfloat16', 'float16'), 'model.attention_impl', m.attention_impl,
               "cuDNN's fused attention takes bfloat16 or float16 activations; set "
               "model.dtype='bfloat16' or use model.attention_impl='xla'")
    if m.attention_impl == 'splash' and jax.default_backend() != 'tpu':
        log.warning("model.attention_impl='splash' off a TPU runs in the Pallas interpreter: "
                    "it checks the kernel's numbers at a crawl; use 'xla' for speed.")
    for name, axis in config.mesh.rules.items():
        _check(axis in ('', *sharding.MESH_AXES), f'mesh.rules.{name}', axis,
               f"valid: {', '.join(map(repr, sharding.MESH_AXES))} or '' (replicated)")
    _check(e.beam_size >= 1, 'eval.beam_size', e.beam_size, 'expected >= 1 (1 = greedy)')
    _check(e.length_penalty >= 0, 'eval.length_penalty', e.length_penalty, 'expected >= 0')
    _check(e.decode_length_offset >= 0, 'eval.decode_length_offset', e.decode_length_offset,
           'expected >= 0 (0 = no limit from the source length)')
    _check(e.batch_size > 0, 'eval.batch_size', e.batch_size, 'expected a positive integer')
    _check(e.max_decode_len > 0, 'eval.max_decode_len', e.max_decode_len, 'expected > 0')
    _check(e.mbr_samples >= 0, 'eval.mbr_samples', e.mbr_samples, 'expected >= 0 (0 = off)')
    _check(0 <= e.mbr_epsilon < 1, 'eval.mbr_epsilon', e.mbr_epsilon, 'expected in [0, 1)')


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> model_lib.ModelConfig:
    """The ``ModelConfig`` of ``config.model`` for a tokenizer of ``vocab_size`` pieces."""
    m = config.model
    return model_lib.ModelConfig.make(
        m.variant, vocab_size, dropout_rate=m.dropout_rate,
        attention_dropout=m.attention_dropout, token_dropout=m.token_dropout,
        max_len=m.max_len, positional=m.positional, pre_ln=m.pre_ln,
        share_embeddings=m.share_embeddings, dtype=m.dtype,
        param_dtype=m.param_dtype, matmul_dtype=m.matmul_dtype or None,
        attention_impl=m.attention_impl, remat=m.remat, scan_layers=m.scan_layers, norm=m.norm,
        ffn=m.ffn, num_kv_heads=m.num_kv_heads, qk_norm=m.qk_norm, use_bias=m.use_bias,
        architecture=m.architecture, prefix_lm=m.prefix_lm)


def make_model(config: ml_collections.ConfigDict,
               vocab_size: int) -> Callable[[], model_lib.TransformerBase]:
    """A function that builds ``config``'s model (``model.EncoderDecoder`` or
    ``decoder_only.DecoderOnly``), initialised from ``config.seed``.

    A function rather than a model, so that callers build it where they need it: under
    ``nnx.eval_shape`` for shapes alone, or inside a jitted, sharded initialization.
    """
    cfg, seed = model_config(config, vocab_size), config.seed
    if cfg.architecture == 'decoder_only':
        return lambda: DecoderOnly(cfg, rngs=nnx.Rngs(seed))
    return lambda: model_lib.EncoderDecoder(cfg, rngs=nnx.Rngs(seed))


def make_schedule(config: ml_collections.ConfigDict) -> optim.Schedule:
    """The learning-rate schedule of ``config.train`` (optax update count -> rate)."""
    t = config.train
    return optim.learning_rate_schedule(t.learning_rate, t.warmup_steps, t.schedule, t.num_steps)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimizer of ``config.train``: ``optax.<optimizer>`` with its kwargs and schedule."""
    t = config.train
    return optim.make_optimizer(make_schedule(config), t.optimizer, t.optimizer_kwargs.to_dict(),
                                grad_clip_norm=t.grad_clip_norm or None)


def _fill_defaults(saved: dict, defaults: dict, prefix: str = '') -> list[str]:
    """Adds to ``saved`` (in place) each field of ``defaults`` it lacks; returns their names."""
    added = []
    for key, value in defaults.items():
        if key not in saved:
            saved[key] = value
            added.append(prefix + key)
        elif isinstance(value, dict) and isinstance(saved[key], dict) and key != 'rules':
            added += _fill_defaults(saved[key], value, f'{prefix}{key}.')
    return added


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote into its workdir (``config.json``)."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f'No such workdir: {workdir}; train first: '
                                f'python train.py --config CONFIG --workdir {workdir}')
    path = os.path.join(workdir, 'config.json')
    if not os.path.exists(path):
        raise FileNotFoundError(f'{workdir} is not a training workdir (no config.json); train '
                                f'first: python train.py --config CONFIG --workdir {workdir}')
    with open(path) as f:
        saved = json.load(f)
    # A field added after the run was written takes its default, which is what the code did
    # before the field existed (every switch defaults to the earlier behaviour).
    try:
        from configs.common import base_config
    except ImportError:  # the library used without the repository's configs/
        base_config = None
    added = _fill_defaults(saved, base_config().to_dict()) if base_config else []
    if added:
        log.info('%s predates config fields %s: using their defaults.', path, ', '.join(added))
    config = ml_collections.ConfigDict(saved)
    try:
        validate(config)
    except (AttributeError, KeyError) as e:
        raise ConfigError(f'{path} lacks a field this code reads ({e}): the run was written by '
                          'another version of the code. Evaluate it with that version, or '
                          'add the field to its config.json.') from None
    return config
