"""The entry points as a user runs them: train, evaluate, stop, resume; bad configs."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from transformer import metrics


def run(script, *args, check=True):
    cmd = [sys.executable, os.path.join(ROOT, script), *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f'{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def tiny(data_dir, workdir, *extra):
    return ['--config', 'configs/default.py:tiny', '--workdir', str(workdir),
            f'--config.data.data_dir={data_dir}', *extra]


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
    """A tiny run trained for 10 steps, then resumed to 20 (outputs kept for the tests)."""
    workdir = tmp_path_factory.mktemp('run')
    first = run('train.py', *tiny(data_dir, workdir, '--config.train.num_steps=10'))
    checkpoints_after_first = sorted(os.listdir(workdir / 'checkpoints'))
    second = run('train.py', *tiny(data_dir, workdir, '--config.train.num_steps=20'))
    return workdir, first, checkpoints_after_first, second


def test_train_evaluate_stop_and_resume(trained, data_dir):
    workdir, _, checkpoints_after_first, out = trained
    assert checkpoints_after_first == ['10']
    for name in ('config.json', 'run_info.json', 'tokenizer.model', 'metrics.jsonl'):
        assert (workdir / name).exists(), name
    assert list((workdir / 'tensorboard').iterdir())
    assert json.loads((workdir / 'run_info.json').read_text())['git']

    # Same command with more steps: resumed at 10 and continued to 20.
    assert 'Resumed from step 10' in out.stderr + out.stdout
    train_steps = [r['step'] for r in metrics.read_metrics(str(workdir)) if r['split'] == 'train']
    assert train_steps == [5, 10, 15, 20]
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']

    out = run('eval.py', *tiny(data_dir, workdir))
    assert 'sacreBLEU' in out.stdout and 'nrefs:1|case:mixed' in out.stdout
    scores = json.loads((workdir / 'eval_test.json').read_text())
    assert scores['step'] == 20 and scores['num_examples'] == 40
    assert {'sacrebleu', 'exact_match'} <= set(scores)
    assert (scores['beam_size'], scores['length_penalty']) == (4, 0.6)  # the decoding used
    assert len((workdir / 'hypotheses_test.txt').read_text().splitlines()) == 40


def test_unknown_config_key_is_named(tmp_path, data_dir):
    out = run('train.py', *tiny(data_dir, tmp_path, '--config.train.batchsize=8'), check=False)
    assert out.returncode != 0
    assert 'batchsize' in out.stderr


@pytest.mark.parametrize('override,named', [
    ('--config.model.variant=huge', "config.model.variant='huge'"),
    ('--config.train.warmup_steps=500', 'config.train.warmup_steps=500'),
    ('--config.data.dataset=wmt99', "config.data.dataset='wmt99'"),
    ('--config.train.schedule=cosine', "config.train.schedule='cosine'"),
    ('--config.train.batch_size=eight', 'batch_size'),
    ('--config.data.subword_nbest=0', 'config.data.subword_nbest=0'),
    ('--config.eval.mbr_epsilon=1.5', 'config.eval.mbr_epsilon=1.5'),
])
def test_bad_config_value_is_named_before_any_work(tmp_path, data_dir, override, named):
    out = run('train.py', *tiny(data_dir, tmp_path / 'w', override), check=False)
    assert out.returncode != 0
    assert named in out.stderr + out.stdout
    assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_eval_without_a_trained_run_says_what_to_do(tmp_path, data_dir):
    out = run('eval.py', *tiny(data_dir, tmp_path / 'empty'), check=False)
    assert out.returncode != 0
    assert 'train first' in out.stderr.lower() or 'train.py' in out.stderr


def test_eval_averages_the_last_checkpoints(trained, data_dir):
    workdir = trained[0]
    out = run('eval.py', *tiny(data_dir, workdir, '--average_last=2', '--split=validation'))
    assert 'average of steps [10, 20]' in out.stdout
    averaged = json.loads((workdir / 'eval_validation_avg2.json').read_text())
    latest = json.loads((workdir / 'eval_validation.json').read_text())
    assert averaged['checkpoint_steps'] == [10, 20] and latest['checkpoint_steps'] == [20]
    assert 'tokenized_lowercased_bleu' in averaged


def test_eval_with_minimum_bayes_risk_decoding(trained, data_dir):
    workdir = trained[0]
    out = run('eval.py', *tiny(data_dir, workdir, '--split=validation', '--config.eval.mbr_samples=3',
                               '--config.eval.batch_size=7'))
    assert 'MBR over 3 samples, epsilon 0.02' in out.stdout
    result = json.loads((workdir / 'eval_validation.json').read_text())
    assert result['mbr_samples'] == 3 and result['num_examples'] == 40
    assert len((workdir / 'hypotheses_validation.txt').read_text().splitlines()) == 40


def test_eval_chooses_the_length_penalty_on_the_tuning_split(trained, data_dir):
    workdir = trained[0]
    out = run('eval.py', *tiny(data_dir, workdir, '--tune_length_penalty=0,2.5'))
    result = json.loads((workdir / 'eval_test.json').read_text())
    tuning = result['length_penalty_tuning']
    assert tuning['split'] == 'validation' and list(tuning['tokenized_lowercased_bleu']) == ['0', '2.5']
    scores = tuning['tokenized_lowercased_bleu']
    assert result['length_penalty'] == float(max(scores, key=scores.get))
    assert f"alpha {result['length_penalty']})" in out.stdout  # the test split used it


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
    (['--tune_length_penalty=0.6,x'], "'x' is not a number >= 0"),
    (['--tune_length_penalty=-1'], "'-1' is not a number >= 0"),
    (['--tune_length_penalty=1', '--tune_split=dev'], "--tune_split='dev' not in numbers_de"),
    (['--tune_length_penalty=1', '--config.eval.beam_size=1'], 'needs beam search'),
])
def test_eval_length_penalty_tuning_errors(trained, data_dir, args, message):
    out = run('eval.py', *tiny(data_dir, trained[0], *args), check=False)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]


def test_make_figures_draws_every_figure_from_a_trained_run(trained, data_dir, tmp_path):
    workdir = trained[0]
    if not (workdir / 'eval_test.json').exists():  # the BLEU chart reads eval.py's output
        run('eval.py', *tiny(data_dir, workdir))
    out = run('docs/make_figures.py', '--default_workdir', str(workdir),
              '--multi30k_workdirs', str(workdir), '--out', str(tmp_path))
    names = {'positional_encoding.png', 'learning_rate.png', 'cross_attention.png',
             'learning_curves.png', 'bleu.png'}
    assert {p.name for p in tmp_path.iterdir()} == names, out.stdout
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG'
    missing = run('docs/make_figures.py', '--default_workdir', str(tmp_path / 'none'),
                  '--multi30k_workdirs', '', '--out', str(tmp_path / 'partial'), check=False)
    assert missing.returncode == 1 and 'train it first' in missing.stderr
    assert sorted(os.listdir(tmp_path / 'partial')) == ['learning_rate.png',
                                                         'positional_encoding.png']


def translate(workdir, text, *args):
    cmd = [sys.executable, os.path.join(ROOT, 'translate.py'), f'--workdir={workdir}', *args]
    return subprocess.run(cmd, cwd=ROOT, input=text, capture_output=True, text=True, timeout=300)


def test_translate_gives_one_line_per_input_line(trained):
    lines = ['twenty-one', '', 'half past seven', 'one ' * 60 + 'dog', 'ünïcödé ✓ never seen']
    out = translate(trained[0], '\n'.join(lines) + '\n')
    assert out.returncode == 0, out.stderr
    outputs = out.stdout.split('\n')[:-1]
    assert len(outputs) == len(lines)
    assert outputs[1] == ''
    assert 'Line 4 has' in out.stderr and 'translating only its first' in out.stderr


def test_translate_greedy_from_a_file(trained, tmp_path):
    (tmp_path / 'in.txt').write_text('twenty-one\nMay 3, 1999\n')
    out = translate(trained[0], '', '--beam_size=1', f'--input={tmp_path / "in.txt"}',
                    f'--output={tmp_path / "out.txt"}')
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / 'out.txt').read_text().splitlines()) == 2


@pytest.mark.parametrize('workdir,text,message', [
    ('missing', 'x\n', 'No such workdir'),
    ('untrained', 'x\n', 'not a training workdir'),
    (None, '\n \n', 'input is empty'),
])
def test_translate_errors_say_what_to_do(trained, tmp_path, workdir, text, message):
    if workdir == 'untrained':
        (tmp_path / workdir).mkdir()
    path = trained[0] if workdir is None else tmp_path / workdir
    out = translate(path, text)
    assert out.returncode != 0
    assert message in out.stderr
