"""eval.py: scores, checkpoint averaging, MBR, length-penalty tuning, ensembles."""

import json
import shutil

import pytest

from conftest import run, tiny
from transformer.model import SIZES

pytestmark = pytest.mark.xdist_group('trained')  # they share one trained run


def test_eval_without_a_trained_run_says_what_to_do(tmp_path, data_dir):
    out = run('eval.py', *tiny(data_dir, tmp_path / 'empty'), check=False)
    assert out.returncode != 0
    assert 'train first' in out.stderr.lower() or 'train.py' in out.stderr


def test_eval_averages_the_last_checkpoints_and_tunes_alpha_for_each(trained, data_dir):
    workdir = trained[0]
    out = run('eval.py', *tiny(data_dir, workdir, '--average_last=2', '--split=test',
                               '--tune_length_penalty=0,2.5'))
    assert 'average of steps [10, 20]' in out.stdout
    averaged = json.loads((workdir / 'eval_test_avg2.json').read_text())
    latest = json.loads((workdir / 'eval_test.json').read_text())
    assert averaged['checkpoint_steps'] == [10, 20] and latest['checkpoint_steps'] == [20]
    assert 'tokenized_lowercased_bleu' in averaged and 0 <= averaged['chrf'] <= 100
    assert latest['decode_tokens_per_sec'] > 0  # the test split fills several batches
    d_model, _, _, _, decoder_layers = SIZES['tiny']  # K and V, float32, every layer
    assert latest['kv_cache_bytes_per_token'] == 2 * decoder_layers * d_model * 4
    for result in (latest, averaged):  # alpha chosen on validation, then used on test
        tuning = result['length_penalty_tuning']
        assert tuning['split'] == 'validation'
        scores = tuning['tokenized_lowercased_bleu']
        assert list(scores) == ['0', '2.5']
        assert result['length_penalty'] == float(max(scores, key=scores.get))
    assert f"alpha {latest['length_penalty']})" in out.stdout  # the test split used it


def test_eval_with_minimum_bayes_risk_decoding(trained, data_dir):
    workdir = trained[0]
    out = run('eval.py', *tiny(data_dir, workdir, '--split=validation', '--config.eval.mbr_samples=3',
                               '--config.eval.batch_size=7'))
    assert 'MBR over 3 samples, epsilon 0.02' in out.stdout
    result = json.loads((workdir / 'eval_validation.json').read_text())
    assert result['mbr_samples'] == 3 and result['num_examples'] == 40
    assert len((workdir / 'hypotheses_validation.txt').read_text().splitlines()) == 40


def test_eval_decodes_an_ensemble_of_runs(trained, data_dir, tmp_path):
    workdir = trained[0]
    twin = tmp_path / 'twin'
    shutil.copytree(workdir, twin)
    run('eval.py', *tiny(data_dir, workdir, '--split=validation'))
    out = run('eval.py', *tiny(data_dir, workdir, '--split=validation', f'--ensemble={twin}'))
    assert 'an ensemble of 2' in out.stdout
    result = json.loads((workdir / 'eval_validation_ens2.json').read_text())
    assert [m['workdir'] for m in result['ensemble']] == [str(workdir), str(twin)]
    # Two copies of one model average to that model: the same translations.
    single = (workdir / 'hypotheses_validation.txt').read_text()
    assert (workdir / 'hypotheses_validation_ens2.txt').read_text() == single

    (twin / 'tokenizer.model').write_bytes(b'another vocabulary')
    out = run('eval.py', *tiny(data_dir, workdir, f'--ensemble={twin}'), check=False)
    assert out.returncode != 0 and 'different tokenizer' in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize('args, message', [
    (['--tune_length_penalty=0.6,-1'], "'-1' is not a number >= 0"),
    (['--tune_length_penalty=1', '--tune_split=dev'], "numbers_de has no split 'dev'"),
    (['--tune_length_penalty=1', '--config.eval.beam_size=1'], 'needs beam search'),
])
def test_eval_length_penalty_tuning_errors(trained, data_dir, args, message):
    out = run('eval.py', *tiny(data_dir, trained[0], *args), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
