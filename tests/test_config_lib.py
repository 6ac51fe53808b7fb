"""Config checks and builders (transformer/config_lib.py)."""

import json

import pytest

from configs import default
from transformer import config_lib


@pytest.mark.parametrize('key,value,named', [
    ('model.variant', 'huge', "config.model.variant='huge' is invalid: expected one of"),
    ('model.matmul_dtype', 'int8', "config.model.matmul_dtype='int8' is invalid"),
    ('train.warmup_steps', 500, 'config.train.warmup_steps=500'),
    ('data.dataset', 'wmt99', "config.data.dataset='wmt99'"),
    ('train.schedule', 'cosine', "config.train.schedule='cosine'"),
    ('train.optimizer', 'adamm', "config.train.optimizer='adamm' is invalid: optax has no"),
    ('data.subword_nbest', 0, 'config.data.subword_nbest=0'),
    ('eval.mbr_epsilon', 1.5, 'config.eval.mbr_epsilon=1.5'),
])
def test_a_bad_value_is_named_with_what_would_be_valid(key, value, named):
    config = default.get_config('tiny')
    section, field = key.split('.')
    config[section][field] = value
    with pytest.raises(config_lib.ConfigError, match=named):
        config_lib.validate(config)


def test_the_optimizer_is_built_from_its_name_and_arguments():
    config = default.get_config('tiny')
    config.train.optimizer = 'adamw'
    config.train.optimizer_kwargs.weight_decay = 0.1  # a field of its own in a config file
    config_lib.validate(config)
    assert config_lib.make_optimizer(config) is not None
    config.train.optimizer_kwargs.b3 = 0.5
    with pytest.raises(config_lib.ConfigError, match='optax.adamw takes no argument b3'):
        config_lib.validate(config)


def test_rdrop_without_any_dropout_is_refused():
    config = default.get_config()
    config.model.dropout_rate = 0.0
    config.train.rdrop_alpha = 5.0
    with pytest.raises(config_lib.ConfigError, match='config.train.rdrop_alpha=5.0.*dropout'):
        config_lib.validate(config)
    config.model.attention_dropout = 0.1
    config_lib.validate(config)
    config.model.attention_dropout = 0.0
    config.model.token_dropout = 0.1
    config_lib.validate(config)


def test_word_dropout_rate_outside_0_1_is_refused():
    config = default.get_config()
    config.model.token_dropout = 1.0
    with pytest.raises(config_lib.ConfigError, match='config.model.token_dropout=1.0'):
        config_lib.validate(config)


def test_a_run_config_written_before_a_field_existed_takes_its_default(tmp_path):
    config = default.get_config('tiny').to_dict()
    for section, key in (('model', 'norm'), ('model', 'num_kv_heads'), ('train', 'profile_steps')):
        del config[section][key]
    (tmp_path / 'config.json').write_text(json.dumps(config))
    loaded = config_lib.load_run_config(str(tmp_path))
    assert (loaded.model.norm, loaded.model.num_kv_heads, loaded.train.profile_steps) == (
        'layernorm', 0, 0)
    assert loaded.model.variant == 'tiny'
