"""Config checks and builders (transformer/config_lib.py)."""

import pytest

from configs import default
from transformer import config_lib


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
