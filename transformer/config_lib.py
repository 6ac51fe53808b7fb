"""Checks a config before anything is built or compiled, and turns it into library objects.

Unknown keys are refused by ml_collections itself (configs are locked ConfigDicts); wrong
types by its type-safe assignment. ``validate`` catches the bad *values*, each with a
message naming the key, the value and what would be valid.
"""

from __future__ import annotations

import ml_collections

from transformer import model as model_lib
from transformer import sharding, tasks, train_lib


class ConfigError(ValueError):
    """A config value that cannot work; the message says which and why."""


def _check(ok: bool, key: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f'config.{key}={value!r} is invalid: {valid}.')


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` for the first bad value found."""
    m, d, t, e = config.model, config.data, config.train, config.eval
    _check(m.variant in model_lib.SIZES, 'model.variant', m.variant,
           f'expected one of {sorted(model_lib.SIZES)}')
    for key in ('dtype', 'param_dtype'):
        _check(m[key] in model_lib.DTYPES, f'model.{key}', m[key],
               f'expected one of {sorted(model_lib.DTYPES)}')
    _check(m.matmul_dtype in ('', *model_lib.DTYPES), 'model.matmul_dtype', m.matmul_dtype,
           f"expected '' (= model.dtype) or one of {sorted(model_lib.DTYPES)}")
    _check(m.positional in ('sinusoidal', 'learned'), 'model.positional', m.positional,
           "expected 'sinusoidal' or 'learned'")
    for key in ('dropout_rate', 'attention_dropout', 'token_dropout'):
        _check(0.0 <= m[key] < 1.0, f'model.{key}', m[key], 'expected 0 <= rate < 1')
    _check(d.dataset in tasks.DATASETS, 'data.dataset', d.dataset,
           f'expected one of {sorted(tasks.DATASETS)}')
    _check(d.vocab_size >= 16, 'data.vocab_size', d.vocab_size, 'expected at least 16')
    for key in ('max_source_length', 'max_target_length'):
        _check(d[key] >= 2, f'data.{key}', d[key], 'expected at least 2 (EOS/BOS included)')
        if m.positional == 'learned':
            _check(d[key] <= m.max_len, f'data.{key}', d[key],
                   f'learned positions cover only model.max_len={m.max_len}')
    if m.positional == 'learned':
        _check(e.max_decode_len <= m.max_len, 'eval.max_decode_len', e.max_decode_len,
               f'learned positions cover only model.max_len={m.max_len}')
    _check(t.batch_size > 0, 'train.batch_size', t.batch_size, 'expected a positive integer')
    _check(t.grad_accum_steps >= 1, 'train.grad_accum_steps', t.grad_accum_steps,
           'expected a positive integer (1 = no accumulation)')
    _check(t.num_steps > 0, 'train.num_steps', t.num_steps, 'expected a positive integer')
    _check(t.learning_rate > 0, 'train.learning_rate', t.learning_rate, 'expected > 0')
    _check(0 <= t.warmup_steps <= t.num_steps, 'train.warmup_steps', t.warmup_steps,
           f'expected 0 <= warmup_steps <= train.num_steps={t.num_steps}')
    _check(t.schedule in train_lib.SCHEDULES, 'train.schedule', t.schedule,
           f'valid: {train_lib.SCHEDULES}')
    if t.schedule == 'linear':
        _check(t.warmup_steps < t.num_steps, 'train.warmup_steps', t.warmup_steps,
               f'linear decay needs warmup_steps < train.num_steps={t.num_steps}')
    _check(0.0 <= t.label_smoothing < 1.0, 'train.label_smoothing', t.label_smoothing,
           'expected 0 <= smoothing < 1')
    _check(t.rdrop_alpha >= 0, 'train.rdrop_alpha', t.rdrop_alpha, 'expected >= 0 (0 = off)')
    _check(not t.rdrop_alpha or max(m.dropout_rate, m.attention_dropout, m.token_dropout) > 0,
           'train.rdrop_alpha', t.rdrop_alpha,
           'R-Drop compares two dropout passes; it needs model.dropout_rate, '
           'model.attention_dropout or model.token_dropout > 0')
    _check(t.grad_clip_norm >= 0, 'train.grad_clip_norm', t.grad_clip_norm,
           'expected >= 0 (0 disables clipping)')
    for key in ('log_every', 'eval_every', 'eval_batches', 'checkpoint_every'):
        _check(t[key] > 0, f'train.{key}', t[key], 'expected a positive number of steps')
    _check(config.data.subword_nbest >= 1, 'data.subword_nbest', config.data.subword_nbest,
           'expected >= 1 (1 = always the best segmentation)')
    _check(not (d.bidirectional and d.subword_nbest > 1), 'data.bidirectional', d.bidirectional,
           'bidirectional training tokenizes once; it needs data.subword_nbest=1')
    _check(config.data.subword_alpha >= 0, 'data.subword_alpha', config.data.subword_alpha,
           'expected >= 0')
    _check(config.data.input_shards >= 0, 'data.input_shards', config.data.input_shards,
           'expected >= 0 (0 = one shard per process)')
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
        attention_dropout=m.attention_dropout,
        token_dropout=m.get('token_dropout', 0.0),  # absent from older runs' config.json
        max_len=m.max_len, positional=m.positional, pre_ln=m.pre_ln,
        share_embeddings=m.share_embeddings, dtype=m.dtype,
        param_dtype=m.param_dtype, matmul_dtype=m.matmul_dtype or None)
