"""The training loop (transformer/trainer.py) and the faults a long run meets: preemption
(SIGTERM, Ctrl-C), kill -9 during checkpoint writes, NaN loss, a damaged checkpoint. The
signal and kill cases run train.py as a real subprocess."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import EN, ROOT, command, load_config, steps_in, tiny, train, write_multi30k_raw
from transformer import config_lib, recase, trainer, writers
from transformer.tokenizer import TOKENIZER_FILE, Tokenizer
from transformer.translator import Translator, restore_run


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
    config.data.update(data_dir=str(tmp_path / 'tfds'), manual_dir=str(write_multi30k_raw(tmp_path / 'raw')),
                       vocab_size=40, lowercase=True)
    config.train.update(batch_size=2, num_steps=2, warmup_steps=1, log_every=1, eval_every=2,
                        eval_batches=1, checkpoint_every=2)
    config.eval.update(batch_size=4, max_decode_len=8)
    workdir = tmp_path / 'run'
    trainer.train_and_evaluate(config, str(workdir))
    recaser = recase.Recaser.load(str(workdir / recase.RECASER_FILE))
    assert recaser.forms == {'hund': 'Hund', 'männer': 'Männer', 'auto': 'Auto'}
    translator = Translator.from_workdir(str(workdir), beam_size=1)
    assert translator.tokenizer.encode('A DOG') == translator.tokenizer.encode('a dog')
    cased = translator.translate(EN)
    translator.recaser = None
    lowercase = translator.translate(EN)
    assert any(lowercase) and all(out == out.lower() for out in lowercase)
    assert cased == [recaser(out) for out in lowercase]


def start(data_dir, workdir, *extra):
    return subprocess.Popen(command('train.py', *tiny(data_dir, workdir, *extra)), cwd=ROOT,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f'train.py ended early: {process.communicate()}')
        if time.time() > deadline:
            process.kill()
            raise AssertionError('timed out')
        time.sleep(0.2)


def final_params(workdir):
    """The parameters of the newest readable checkpoint in ``workdir``."""
    config = config_lib.load_run_config(str(workdir))
    tokenizer = Tokenizer.load(os.path.join(workdir, TOKENIZER_FILE))
    return restore_run(config, str(workdir), tokenizer)[1]


def trained_steps(workdir):
    return [r['step'] for r in writers.read_metrics(str(workdir)) if r['split'] == 'train']


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
    if signum == signal.SIGINT:
        return  # resuming is the same for both signals; SIGTERM's case checks it
    out = train(data_dir, workdir, f'--config.train.num_steps={saved[0] + 5}',
                '--config.train.checkpoint_every=1000')
    assert out.returncode == 0, out.stderr
    assert f'Resumed from step {saved[0]}' in out.stderr
    assert steps_in(workdir)[-1] == saved[0] + 5


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, data_dir):
    # Dropout, packing and a reshuffle every epoch (400 pairs / ~60 per batch) are all on.
    straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
    assert train(data_dir, straight, '--config.train.num_steps=16').returncode == 0
    assert train(data_dir, resumed, '--config.train.num_steps=9').returncode == 0
    assert train(data_dir, resumed, '--config.train.num_steps=16').returncode == 0
    for a, b in zip(jax.tree.leaves(final_params(straight)), jax.tree.leaves(final_params(resumed))):
        np.testing.assert_array_equal(a, b)


def test_kill_9_during_checkpoint_writes_leaves_a_restorable_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    args = ('--config.train.num_steps=100000', '--config.train.checkpoint_every=1',
            '--config.train.max_checkpoints=2')
    for attempt in range(2):  # a checkpoint is being written nearly all the time
        before = steps_in(workdir)
        process = start(data_dir, workdir, *args)
        wait_for(lambda: len(steps_in(workdir)) >= 2 and steps_in(workdir) != before, process)
        time.sleep(0.05 * attempt)
        process.kill()
        process.wait()
    latest = steps_in(workdir)[-1]
    out = train(data_dir, workdir, f'--config.train.num_steps={latest + 2}', *args[1:])
    assert out.returncode == 0, out.stderr
    assert 'Resumed from step' in out.stderr
    assert steps_in(workdir)[-1] == latest + 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    # A learning rate of 1e30 makes every parameter ~1e30 after one step: the next loss is
    # not finite.
    out = train(data_dir, workdir, '--config.train.learning_rate=1e30',
              '--config.train.warmup_steps=0', '--config.train.checkpoint_every=1')
    assert out.returncode == 1
    assert 'NaN or infinite at step 2' in out.stderr, out.stderr
    assert steps_in(workdir) == [1]
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final_params(workdir)))


def test_time_budget_sets_the_steps_once_and_a_resumed_run_keeps_them(tmp_path, data_dir):
    workdir = tmp_path / 'run'
    budget = ('--config.train.time_budget_minutes=0.01', '--config.train.checkpoint_every=1000',
              '--config.train.eval_every=1000')
    out = train(data_dir, workdir, *budget)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((workdir / 'budget.json').read_text())
    assert record['num_steps'] == int(0.01 * 60 / record['step_seconds'])
    assert steps_in(workdir) == [record['num_steps']]
    assert 'Time budget 0.01 min' in out.stderr
    # A resumed run trains to the recorded count (here raised by 3), not a new measurement.
    record['num_steps'] += 3
    (workdir / 'budget.json').write_text(json.dumps(record))
    out = train(data_dir, workdir, *budget)
    assert out.returncode == 0, out.stderr[-3000:]
    assert steps_in(workdir)[-1] == record['num_steps']
    out = train(data_dir, workdir, '--config.train.time_budget_minutes=0.5')
    assert out.returncode != 0 and 'this run was started with 0.01' in out.stderr, out.stderr
    short = tmp_path / 'short'  # a budget that ends inside the warm-up is refused
    short.mkdir()
    (short / 'budget.json').write_text(json.dumps(dict(record, num_steps=3)))
    out = train(data_dir, short, *budget)
    assert out.returncode != 0 and 'fits only 3 steps' in out.stderr, out.stderr
