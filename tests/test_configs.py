"""The experiment configs in configs/: what each must hold, not the values it was tuned to."""

import json

import pytest

from configs import common
from configs import default as default_config
from configs import multi30k as multi30k_config
from conftest import load_config
from transformer import config_lib

SPECS = ['configs/default.py', 'configs/default.py:tiny', 'configs/multi30k.py',
         'configs/multi30k.py:reverse=True', 'configs/multi30k.py:reverse=True,ensemble=2',
         'configs/wmt14_ende.py:base', 'configs/wmt14_ende.py:big',
         'configs/multi30k.py:arch=modern', 'configs/multi30k.py:budget=30',
         'configs/multi30k.py:reverse=True,arch=decoder_only',
         'configs/default.py:tiny,arch=modern', 'configs/wmt14_ende.py:big,arch=decoder_only']


@pytest.mark.parametrize('spec', SPECS)
def test_every_config_is_valid_and_has_every_field_of_the_base(spec):
    config = load_config(spec)
    config_lib.validate(config)
    base = common.base_config()
    assert set(config.to_dict()) == set(base.to_dict())
    for section in ('data', 'model', 'train', 'mesh', 'distributed', 'eval'):
        assert set(config[section].keys()) == set(base[section].keys()), section


@pytest.mark.parametrize('variant,peak', [('base', (512 * 4000) ** -0.5), ('big', (1024 * 4000) ** -0.5)])
def test_wmt14_config_has_the_paper_hyperparameters(variant, peak):
    config = load_config(f'configs/wmt14_ende.py:{variant}')
    t = config.train
    assert (t.optimizer, t.optimizer_kwargs.to_dict()) == ('adam', dict(b1=0.9, b2=0.98, eps=1e-9))
    assert t.label_smoothing == 0.1 and t.schedule == 'rsqrt'
    assert t.warmup_steps == 4000 and t.learning_rate == pytest.approx(peak)
    assert config.model.dropout_rate == (0.1 if variant == 'base' else 0.3)
    tokens = t.batch_size * t.grad_accum_steps * config.data.max_source_length
    assert 24_000 <= tokens <= 26_000
    assert (config.eval.beam_size, config.eval.length_penalty) == (4, 0.6)


def test_multi30k_directions_and_the_schedule_counted_in_rows():
    de_en, en_de = load_config('configs/multi30k.py'), load_config('configs/multi30k.py:reverse=True')
    assert (de_en.data.builder_kwargs.reverse, de_en.data.target_language) == (False, 'en')
    assert (en_de.data.builder_kwargs.reverse, en_de.data.target_language) == (True, 'de')
    for config in (de_en, en_de):  # 160 validation rows; the last 5 checkpoints span the end
        assert config.train.eval_batches * config.train.batch_size == 160
        assert config.train.checkpoint_every * config.train.max_checkpoints < config.train.num_steps
    before = en_de.train.eval_every * en_de.train.batch_size
    en_de.train.batch_size *= 2       # as --config.train.batch_size=32 sets it
    assert en_de.train.eval_every * en_de.train.batch_size == before
    assert en_de.train.eval_batches * en_de.train.batch_size == 160


def test_multi30k_ensemble_members_differ_only_in_dropout_and_steps():
    member = load_config('configs/multi30k.py:reverse=True,ensemble=2')
    single = load_config('configs/multi30k.py:reverse=True,ensemble=1')
    assert member.train.num_steps < single.train.num_steps  # each member has one core
    member.model.dropout_rate = single.model.dropout_rate
    member.train.num_steps = single.train.num_steps
    assert member.to_dict() == single.to_dict()


@pytest.mark.parametrize('arg,message', [
    ('revers=True', r"Bad config argument 'revers=True'; valid: reverse=VALUE"),
    ('reverse=maybe', "'maybe' is not a boolean"),
    ('ensemble=2', 'ensemble=2: the recipes are'),
    ('reverse=True,ensemble=3', 'ensemble=3: the recipes are'),
    ('budget=-1', 'budget=-1: minutes of training'),
    ('reverse=True,ensemble=2,budget=5', 'budget=5: minutes of training'),
])
def test_multi30k_arguments_are_checked(arg, message):
    with pytest.raises(ValueError, match=message):
        multi30k_config.get_config(arg)


def test_architecture_presets_set_the_block_and_keep_the_rest():
    paper = load_config('configs/multi30k.py:reverse=True')
    modern = load_config('configs/multi30k.py:reverse=True,arch=modern')
    decoder_only = load_config('configs/multi30k.py:reverse=True,arch=decoder_only')
    assert (modern.model.norm, modern.model.positional, modern.model.ffn) == (
        'rmsnorm', 'rope', 'swiglu')
    assert modern.model.num_kv_heads == 2 and modern.model.qk_norm and not modern.model.use_bias
    assert decoder_only.model.architecture == 'decoder_only' and decoder_only.model.prefix_lm
    for config in (modern, decoder_only):  # only the block differs from the paper's recipe
        for section in ('data', 'train', 'eval'):
            assert config[section].to_dict() == paper[section].to_dict()
    assert load_config('configs/wmt14_ende.py:big,arch=modern').model.num_kv_heads == 8
    with pytest.raises(ValueError, match='Bad arch=huge; valid: paper, modern, decoder_only'):
        default_config.get_config('arch=huge')


def test_comparison_budget_and_its_sweep():
    config = load_config('configs/multi30k.py:budget=30,arch=modern')
    assert config.train.time_budget_minutes == 30 and config.model.positional == 'rope'
    assert load_config('configs/multi30k.py').train.time_budget_minutes == 0
    trials = multi30k_config.get_sweep('budget=30')
    assert len(trials) == 3 * 2 * 2 + len(multi30k_config.SINGLE_SWITCHES) + 1
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == len(trials)
    assert sum(t.get('model.architecture') == 'decoder_only' for t in trials) == 4 + 1
    assert len(multi30k_config.get_sweep()) == 8  # without a budget: the hyperparameter search
    # One recipe whichever direction the argument names: the sweep's en->de trials start
    # from reverse=False and override the data fields.
    en_de = load_config('configs/multi30k.py:reverse=True,budget=30')
    swept = load_config('configs/multi30k.py:budget=30')
    swept.data.builder_kwargs.reverse, swept.data.target_language = True, 'de'
    assert swept.to_dict() == en_de.to_dict()
