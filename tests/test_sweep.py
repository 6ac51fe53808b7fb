"""sweep.py end to end on the tiny config: one trial fails alone, a rerun resumes."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SWEEP_CONFIG = '''
from configs import default


def get_config(arg=None):
    return default.get_config('tiny')


def get_sweep(arg=None):
    # The second trial names a model size that does not exist: it must fail alone.
    return [{'train.learning_rate': 0.002}, {'model.variant': 'huge'}]
'''


def sweep(tmp_path, data_dir, *extra):
    config = tmp_path / 'sweep_config.py'
    config.write_text(SWEEP_CONFIG)
    cmd = [sys.executable, 'sweep.py', '--config', str(config), '--workdir',
           str(tmp_path / 'sweep'), f'--extra=data.data_dir={data_dir}', *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_sweep_runs_records_a_failure_and_resumes(tmp_path, data_dir):
    out = sweep(tmp_path, data_dir, '--metric', 'validation_accuracy', '--cores_per_trial=1')
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / 'sweep' / 'results.csv') as f:
        rows = {row['trial']: row for row in csv.DictReader(f)}
    assert set(rows) == {'learning_rate=0.002', 'variant=huge'}
    good, bad = rows['learning_rate=0.002'], rows['variant=huge']
    assert good['status'] == 'done' and float(good['validation_accuracy']) > 0
    assert good['bleu'] != ''  # eval.py ran on the validation split
    record = json.loads((tmp_path / 'sweep' / 'learning_rate=0.002' / 'trial.json').read_text())
    assert len(record['cores']) == 1 and 'started on core(s)' in out.stdout
    assert bad['status'] == 'failed' and 'model.variant' in bad['error']
    table = (tmp_path / 'sweep' / 'results.md').read_text()
    assert table.index('learning_rate') < table.index('0.002') < table.index('huge')
    assert (tmp_path / 'sweep' / 'sweep.png').stat().st_size > 0

    again = sweep(tmp_path, data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'learning_rate=0.002: done before, skipped' in again.stdout
    assert 'variant=huge: failed before, skipped' in again.stdout

    # A trial interrupted before it finished (no trial.json yet) resumes from its checkpoint.
    trial_dir = tmp_path / 'sweep' / 'learning_rate=0.002'
    (trial_dir / 'trial.json').unlink()
    resumed = sweep(tmp_path, data_dir, '--noeval')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'learning_rate=0.002: done in' in resumed.stdout
    assert 'Already trained to step 20' in (trial_dir / 'train.log').read_text()


def test_dry_run_prints_one_command_per_trial(tmp_path, data_dir):
    out = sweep(tmp_path, data_dir, '--dry_run', "--eval_flags=--split=test --average_last=2")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith('python train.py --config ')
    assert '--config.train.learning_rate=0.002' in lines[0] and '&& python eval.py' in lines[0]
    assert lines[0].endswith(" --split=test --average_last=2")
    assert '--config.model.variant=huge' in lines[1]
    assert not (tmp_path / 'sweep').exists()  # nothing ran


def test_optuna_study_records_its_trials(tmp_path, data_dir):
    pytest.importorskip('optuna')
    out = sweep(tmp_path, data_dir, '--mode', 'optuna', '--n_trials', '2', '--noeval')
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(tmp_path / 'sweep' / 'study.db')
    with open(tmp_path / 'sweep' / 'results.csv') as f:
        assert len(list(csv.DictReader(f))) == 2


def test_pinning_more_cores_than_there_are_is_refused(tmp_path, data_dir):
    out = sweep(tmp_path, data_dir, '--parallel=2', f'--cores_per_trial={os.cpu_count()}')
    assert out.returncode != 0
    assert f'--parallel=2 x --cores_per_trial={os.cpu_count()} needs' in out.stderr
