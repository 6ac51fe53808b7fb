"""Sweep spaces (transformer/hparam_search.py): grids, seeded random search, trial names."""

from transformer import hparam_search


def test_grid_is_every_combination_and_random_search_is_seeded():
    trials = hparam_search.grid(**{'train.learning_rate': [1e-3, 2e-3], 'train.warmup_steps': [1, 2, 3]})
    assert len(trials) == 6 and {'train.learning_rate': 2e-3, 'train.warmup_steps': 3} in trials
    space = {'train.learning_rate': hparam_search.LogUniform(1e-4, 1e-2),
             'model.dropout_rate': hparam_search.Uniform(0.0, 0.3),
             'model.variant': hparam_search.Choice(('tiny', 'mini'))}
    first, again = hparam_search.random_search(20, 0, **space), hparam_search.random_search(20, 0, **space)
    assert first == again != hparam_search.random_search(20, 1, **space)
    assert all(1e-4 <= t['train.learning_rate'] <= 1e-2 and 0 <= t['model.dropout_rate'] <= 0.3
               for t in first)
    assert {t['model.variant'] for t in first} == {'tiny', 'mini'}
    assert hparam_search.trial_name(trials[0]) == 'learning_rate=0.001,warmup_steps=1'
    assert hparam_search.flags(trials[0]) == ['--config.train.learning_rate=0.001',
                                       '--config.train.warmup_steps=1']
