"""Real-translation plumbing without the network: Multi30k's offline path, WMT14 on mock
data, the BLEU wrappers and gradient accumulation."""

import gzip
import logging
import urllib.error

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags

from configs import multi30k as multi30k_config
from conftest import ROOT, make_model, random_tokens
from transformer import inference, metrics, multi30k, recase, tasks, train_lib, trainer

EN = ['A dog runs.', 'Two men talk.', 'A red car.']
DE = ['Ein Hund rennt.', 'Zwei Männer reden.', 'Ein rotes Auto.']


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails at once, as it would offline."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')
    monkeypatch.setattr(multi30k.urllib.request, 'urlopen', refuse)


def write_raw(folder, en=EN, de=DE):
    folder.mkdir(parents=True, exist_ok=True)
    for stem in multi30k.SPLITS.values():
        for lang, lines in (('en', en), ('de', de)):
            with gzip.open(folder / f'{stem}.{lang}.gz', 'wt', encoding='utf-8') as f:
                f.write(''.join(line + ' \n' for line in lines))  # trailing space is stripped
    return folder


def test_multi30k_builds_offline_from_a_local_folder(tmp_path, caplog):
    raw = write_raw(tmp_path / 'raw')
    with caplog.at_level(logging.WARNING, logger='transformer'):
        splits = tasks.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(raw))
    assert 'sha256 mismatch' in caplog.text  # our files are not the published ones
    assert set(splits) == {'train', 'validation', 'test2016'}
    assert list(splits['test2016']) == list(zip(DE, EN))  # German -> English by default
    reverse = tasks.load_splits('multi30k', str(tmp_path / 'tfds'), reverse=True)
    assert list(reverse['train']) == list(zip(EN, DE))  # prepared once, reused offline


def test_multi30k_keeps_the_order_of_the_raw_files(tmp_path):
    # eval.py writes hypotheses in split order; they must line up with the raw files.
    en = [f'Sentence number {i}.' for i in range(40)]
    de = [f'Satz Nummer {i}.' for i in range(40)]
    splits = tasks.load_splits('multi30k', str(tmp_path / 'tfds'),
                               manual_dir=str(write_raw(tmp_path / 'raw', en, de)))
    assert [pair[1] for pair in splits['test2016']] == en


def test_multi30k_without_data_or_network_says_both_fixes(tmp_path):
    with pytest.raises(multi30k.DataNotFoundError) as error:
        tasks.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'nope'))
    message = str(error.value)
    assert 'connect to the internet' in message and '--config.data.manual_dir' in message
    assert 'train.en.gz' in message


def test_multi30k_refuses_files_of_different_lengths(tmp_path):
    raw = write_raw(tmp_path / 'raw', de=DE[:2])
    with pytest.raises(ValueError, match='3 lines but .* has 2'):
        tasks.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(raw))


def test_wmt14_reads_the_catalog_builder_english_to_german():
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = tasks.load_splits('wmt14_translate')
    assert {k: len(v) for k, v in splits.items()} == {'train': 6, 'validation': 6, 'test': 6}
    assert all(isinstance(src, str) and isinstance(tgt, str) for src, tgt in splits['train'])


def load_config(spec):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', f'{ROOT}/{spec}', flag_values=flag_values)
    flag_values(['prog'])
    return flag_values.config


@pytest.mark.parametrize('variant,peak', [('base', (512 * 4000) ** -0.5), ('big', (1024 * 4000) ** -0.5)])
def test_wmt14_config_has_the_paper_hyperparameters(variant, peak):
    config = load_config(f'configs/wmt14_ende.py:{variant}')
    t = config.train
    assert (t.adam_b1, t.adam_b2, t.adam_eps, t.label_smoothing) == (0.9, 0.98, 1e-9, 0.1)
    assert t.warmup_steps == 4000 and t.learning_rate == pytest.approx(peak)
    assert config.model.dropout_rate == (0.1 if variant == 'base' else 0.3)
    tokens = t.batch_size * t.grad_accum_steps * config.data.max_source_length
    assert 24_000 <= tokens <= 26_000
    assert (config.eval.beam_size, config.eval.length_penalty) == (4, 0.6)


def test_multi30k_configs_hold_the_measured_recipes():
    de_en, en_de = load_config('configs/multi30k.py'), load_config('configs/multi30k.py:reverse=True')
    assert (de_en.data.builder_kwargs.reverse, de_en.data.target_language) == (False, 'en')
    assert (en_de.data.builder_kwargs.reverse, en_de.data.target_language) == (True, 'de')
    assert (de_en.data.vocab_size, de_en.train.batch_size, de_en.train.num_steps) == (8000, 32, 2300)
    assert (en_de.data.vocab_size, en_de.train.batch_size, en_de.train.num_steps) == (4000, 16, 14000)
    assert (de_en.model.dropout_rate, en_de.model.dropout_rate) == (0.1, 0.25)
    assert (de_en.model.matmul_dtype, en_de.model.matmul_dtype) == ('', 'bfloat16')
    assert (de_en.data.lowercase, en_de.data.lowercase) == (False, True)
    assert (de_en.eval.length_penalty, en_de.eval.length_penalty) == (0.6, 1.0)
    for config in (de_en, en_de):  # 160 validation rows; the last 5 checkpoints span the end
        assert config.train.eval_batches * config.train.batch_size == 160
        assert config.train.checkpoint_every * config.train.max_checkpoints < config.train.num_steps
    en_de.train.batch_size = 64       # as --config.train.batch_size=64 sets it
    assert (en_de.train.eval_every, en_de.train.eval_batches, en_de.train.checkpoint_every) == (
        250, 2, 50)
    with pytest.raises(ValueError, match=r"\['revers'\]; valid: reverse=True\|False, ensemble"):
        multi30k_config.get_config('revers=True')


def test_multi30k_ensemble_members_hold_their_recipe():
    member = load_config('configs/multi30k.py:reverse=True,ensemble=2')
    single = load_config('configs/multi30k.py:reverse=True,ensemble=1')
    assert (member.model.dropout_rate, member.train.num_steps) == (0.15, 7500)
    assert (single.model.dropout_rate, single.train.num_steps) == (0.25, 14000)
    member.model.dropout_rate, member.train.num_steps = 0.25, 14000
    assert member.to_dict() == single.to_dict()  # nothing else differs
    for arg in ('ensemble=2', 'reverse=True,ensemble=3'):
        with pytest.raises(ValueError, match='not a measured recipe'):
            multi30k_config.get_config(arg)


def test_wmt14_trains_end_to_end_on_mock_data(tmp_path):
    config = load_config('configs/wmt14_ende.py:base')
    config.model.variant = 'tiny'
    config.data.update(vocab_size=60, max_source_length=32, max_target_length=32)
    config.train.update(batch_size=2, grad_accum_steps=2, num_steps=2, warmup_steps=1,
                        log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2)
    config.eval.batch_size = 4
    with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
        result = trainer.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(result['loss'])
    assert (tmp_path / 'checkpoints' / '2').exists()


def test_lowercased_multi30k_run_translates_with_restored_case(tmp_path):
    config = load_config('configs/multi30k.py:reverse=True')
    config.model.variant = 'tiny'
    config.data.update(data_dir=str(tmp_path / 'tfds'), manual_dir=str(write_raw(tmp_path / 'raw')),
                       vocab_size=40, lowercase=True)
    config.train.update(batch_size=2, num_steps=2, warmup_steps=1, log_every=1, eval_every=2,
                        eval_batches=1, checkpoint_every=2)
    config.eval.update(batch_size=4, max_decode_len=8)
    workdir = tmp_path / 'run'
    trainer.train_and_evaluate(config, str(workdir))
    recaser = recase.Recaser.load(str(workdir / recase.RECASER_FILE))
    assert recaser.forms == {'hund': 'Hund', 'männer': 'Männer', 'auto': 'Auto'}
    translator = inference.Translator.from_workdir(str(workdir), beam_size=1)
    assert translator.tokenizer.encode('A DOG') == translator.tokenizer.encode('a dog')
    cased = translator.translate(EN)
    translator.recaser = None
    lowercase = translator.translate(EN)
    assert any(lowercase) and all(out == out.lower() for out in lowercase)
    assert cased == [recaser(out) for out in lowercase]


def test_bleu_wrappers():
    refs = ['A dog runs in the park.', 'Two men are talking.']
    assert metrics.bleu(refs, refs)[0] == pytest.approx(100.0)
    assert 'case:mixed' in metrics.bleu(refs, refs)[1]
    lowered = [r.lower() for r in refs]
    assert metrics.bleu(lowered, refs)[0] < 100.0  # sacreBLEU is cased
    assert metrics.tokenized_bleu(lowered, refs, 'en') == pytest.approx(100.0)
    assert metrics.tokenized_bleu(['A dog runs in the park .'], refs[:1], 'en') == pytest.approx(100.0)
    assert metrics.tokenized_bleu(['a cat'], refs[:1], 'en') < 10.0
    assert metrics.exact_match(['x', 'y '], ['x', 'z']) == 50.0


def test_gradient_accumulation_equals_one_large_batch(rng):
    tgt = random_tokens(rng, 8, 6, min_len=2)
    batch = {'inputs': random_tokens(rng, 8, 7, min_len=2), 'targets': tgt,
             'decoder_inputs': np.concatenate([np.full((8, 1), 2, np.int32), tgt[:, :-1]], 1)}
    results = []
    for accum in (1, 4):
        model = make_model()
        optimizer = optax.sgd(0.1)  # linear in the gradient, unlike Adam's first step
        graphdef, state = train_lib.init_state(model, optimizer)
        step = train_lib.make_train_step(graphdef, optimizer, label_smoothing=0.1,
                                         dropout_seed=0, grad_accum_steps=accum)
        state, sums = step(state, batch)
        results.append((state.params, sums))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
