"""train.py as a user runs it: train, stop, resume; bad configs named before any work."""

import json
import os
import subprocess

import pytest

from conftest import command, run, tiny
from transformer import writers


@pytest.mark.xdist_group('trained')
def test_train_evaluate_stop_and_resume(trained, data_dir):
    workdir, checkpoints_after_first, out = trained
    assert checkpoints_after_first == ['10']
    for name in ('config.json', 'run_info.json', 'tokenizer.model', 'metrics.jsonl'):
        assert (workdir / name).exists(), name
    assert list((workdir / 'tensorboard').iterdir())
    assert json.loads((workdir / 'run_info.json').read_text())['git']

    # Same command with more steps: resumed at 10 and continued to 20.
    assert 'Resumed from step 10' in out.stderr + out.stdout
    records = [r for r in writers.read_metrics(str(workdir)) if r['split'] == 'train']
    assert [r['step'] for r in records] == [5, 10, 15, 20]
    assert all(0 < r['mfu'] < 1 and r['tokens_per_sec'] > 0 for r in records)
    # The profiled steps' trace, for TensorBoard (.xplane.pb) and Perfetto (.trace.json.gz).
    traces = sorted(p.name for p in (workdir / 'profile').rglob('*') if p.is_file())
    assert any(n.endswith('.xplane.pb') for n in traces), traces
    assert any(n.endswith('.trace.json.gz') for n in traces), traces
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
    ('--config.train.batch_size=eight', 'batch_size'),
])
def test_bad_config_value_is_named_before_any_work(tmp_path, data_dir, override, named):
    """The CLI shows validation's message (each check: test_config_lib.py) and exits first."""
    out = run('train.py', *tiny(data_dir, tmp_path / 'w', override), check=False)
    assert out.returncode != 0
    assert named in out.stderr + out.stdout
    assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_processes_started_at_once_on_an_empty_data_dir_prepare_it_once(tmp_path):
    """The ensemble recipe starts its members together: both must find the data prepared
    by whichever came first, not race to write it."""
    data_dir = tmp_path / 'tfds'
    processes = [subprocess.Popen(command('train.py', *tiny(
        data_dir, tmp_path / f'run{i}', '--config.train.num_steps=2',
        '--config.train.warmup_steps=1', f'--config.seed={i}')),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    prepared = sum('downloaded and prepared' in stdout + stderr for stdout, stderr in outputs)
    assert prepared == 1
    versions = [v.name for v in (data_dir / 'numbers_de').glob('*/*') if v.is_dir()]
    assert versions == ['1.0.0']  # no incomplete.* left behind
