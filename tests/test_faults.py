"""Faults a long run meets, each with its outcome asserted: preemption (SIGTERM, Ctrl-C),
kill -9 during checkpoint writes, NaN loss, a checkpoint of another model, bad data.
The signal and kill cases run train.py as a real subprocess."""

import gzip
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT
from transformer import checkpoint, data, inference, metrics, tasks
from transformer.multi30k import SPLITS


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def command(data_dir, workdir, *extra):
    return [sys.executable, os.path.join(ROOT, 'train.py'), '--config', 'configs/default.py:tiny',
            '--workdir', str(workdir), f'--config.data.data_dir={data_dir}', *extra]


def run(data_dir, workdir, *extra):
    return subprocess.run(command(data_dir, workdir, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def start(data_dir, workdir, *extra):
    return subprocess.Popen(command(data_dir, workdir, *extra), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f'train.py ended early: {process.communicate()}')
        if time.time() > deadline:
            process.kill()
            raise AssertionError('timed out')
        time.sleep(0.2)


def steps_in(workdir):
    path = os.path.join(workdir, 'checkpoints')
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def final_params(workdir):
    config = inference.load_config(str(workdir))
    vocab = data.Tokenizer.load(os.path.join(workdir, data.TOKENIZER_FILE)).vocab_size
    _, _, _, state = inference.build_state(config, vocab)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), None)
    return ckpt.restore(state)[0].params


def trained_steps(workdir):
    return [r['step'] for r in metrics.read_metrics(str(workdir)) if r['split'] == 'train']


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_the_current_step_and_the_same_command_resumes(tmp_path, data_dir, signum):
    workdir = tmp_path / 'run'
    args = ('--config.train.num_steps=100000', '--config.train.checkpoint_every=1000',
            '--config.train.eval_every=1000')
    process = start(data_dir, workdir, *args)
    wait_for(lambda: len(trained_steps(workdir)) >= 2, process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err
    assert f'Stopped by {signal.Signals(signum).name} at step' in err
    saved = steps_in(workdir)
    assert len(saved) == 1 and saved[0] >= 10  # the step it was on, not a periodic one
    out = run(data_dir, workdir, f'--config.train.num_steps={saved[0] + 5}',
              '--config.train.checkpoint_every=1000')
    assert out.returncode == 0, out.stderr
    assert f'Resumed from step {saved[0]}' in out.stderr
    assert steps_in(workdir)[-1] == saved[0] + 5


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, data_dir):
    # Dropout, packing and a reshuffle every epoch (400 pairs / ~60 per batch) are all on.
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    assert run(data_dir, straight, '--config.train.num_steps=24').returncode == 0
    assert run(data_dir, resumed, '--config.train.num_steps=13').returncode == 0
    assert run(data_dir, resumed, '--config.train.num_steps=24').returncode == 0
    for a, b in zip(jax.tree.leaves(final_params(straight)), jax.tree.leaves(final_params(resumed))):
        np.testing.assert_array_equal(a, b)


def test_kill_9_during_checkpoint_writes_leaves_a_restorable_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    args = ('--config.train.num_steps=100000', '--config.train.checkpoint_every=1',
            '--config.train.max_checkpoints=2', '--config.model.variant=mini')
    for attempt in range(3):  # a checkpoint is being written nearly all the time
        before = steps_in(workdir)
        process = start(data_dir, workdir, *args)
        wait_for(lambda: len(steps_in(workdir)) >= 2 and steps_in(workdir) != before, process)
        time.sleep(0.05 * attempt)
        process.kill()
        process.wait()
    latest = steps_in(workdir)[-1]
    out = run(data_dir, workdir, f'--config.train.num_steps={latest + 2}', *args[1:])
    assert out.returncode == 0, out.stderr
    assert 'Resumed from step' in out.stderr
    assert steps_in(workdir)[-1] == latest + 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    # A learning rate of 1e30 makes every parameter ~1e30 after one step: the next loss is
    # not finite.
    out = run(data_dir, workdir, '--config.train.learning_rate=1e30',
              '--config.train.warmup_steps=0', '--config.train.checkpoint_every=1')
    assert out.returncode == 1
    assert 'NaN or infinite at step 2' in out.stderr, out.stderr
    assert steps_in(workdir) == [1]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final_params(workdir)))


def test_checkpoint_of_another_model_size_names_the_mismatch(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    assert run(data_dir, workdir, '--config.train.num_steps=6').returncode == 0
    out = run(data_dir, workdir, '--config.train.num_steps=8', '--config.model.variant=mini')
    assert out.returncode == 1
    assert 'does not fit this model' in out.stderr
    expected = 'params.decoder.0.cross_attention.key.kernel: checkpoint (32, 4, 8), model (128, 4, 32)'
    assert expected in out.stderr


def test_bad_lines_in_raw_data_are_reported_and_skipped(tmp_path, caplog, monkeypatch):
    import urllib.error

    from transformer import multi30k

    def refuse(*args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')
    monkeypatch.setattr(multi30k.urllib.request, 'urlopen', refuse)
    raw = tmp_path / 'raw'
    raw.mkdir()
    en = [b'A dog.', b'', b'Two cats.', b'A bad \xff line.', b'A house.']
    de = [b'Ein Hund.', b'Leer.', b'Zwei Katzen.', b'Eine Zeile.', b'Ein Haus.']
    for stem in SPLITS.values():
        for lang, lines in (('en', en), ('de', de)):
            with gzip.open(raw / f'{stem}.{lang}.gz', 'wb') as f:
                f.write(b'\n'.join(lines) + b'\n')
    with caplog.at_level(logging.WARNING, logger='transformer'):
        splits = tasks.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(raw))
    assert sorted(splits['train']) == [('Ein Haus.', 'A house.'), ('Ein Hund.', 'A dog.'),
                                       ('Zwei Katzen.', 'Two cats.')]
    assert 'train.en.gz line 4 is not valid UTF-8' in caplog.text
    assert 'skipped 2 of 5 pairs' in caplog.text
