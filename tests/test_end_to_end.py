"""The entry points as a user runs them: train, evaluate, stop, resume; bad configs."""

import json
import os
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


def test_train_evaluate_stop_and_resume(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    run('train.py', *tiny(data_dir, workdir, '--config.train.num_steps=10'))
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['10']
    for name in ('config.json', 'run_info.json', 'tokenizer.model', 'metrics.jsonl'):
        assert (workdir / name).exists(), name
    assert list((workdir / 'tensorboard').iterdir())
    assert json.loads((workdir / 'run_info.json').read_text())['git']

    # Same command with more steps: resumes at 10 and continues to 20.
    out = run('train.py', *tiny(data_dir, workdir, '--config.train.num_steps=20'))
    assert 'Resumed from step 10' in out.stderr + out.stdout
    train_steps = [r['step'] for r in metrics.read_metrics(str(workdir)) if r['split'] == 'train']
    assert train_steps == [5, 10, 15, 20]
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']

    out = run('eval.py', *tiny(data_dir, workdir))
    assert 'sacreBLEU' in out.stdout and 'nrefs:1|case:mixed' in out.stdout
    scores = json.loads((workdir / 'eval_test.json').read_text())
    assert scores['step'] == 20 and scores['num_examples'] == 40
    assert {'sacrebleu', 'exact_match'} <= set(scores)
    assert len((workdir / 'hypotheses_test.txt').read_text().splitlines()) == 40


def test_unknown_config_key_is_named(tmp_path, data_dir):
    out = run('train.py', *tiny(data_dir, tmp_path, '--config.train.batchsize=8'), check=False)
    assert out.returncode != 0
    assert 'batchsize' in out.stderr


@pytest.mark.parametrize('override,named', [
    ('--config.model.variant=huge', "config.model.variant='huge'"),
    ('--config.train.warmup_steps=500', 'config.train.warmup_steps=500'),
    ('--config.data.dataset=wmt99', "config.data.dataset='wmt99'"),
    ('--config.train.batch_size=eight', 'batch_size'),
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
