"""Checkpoints (transformer/checkpoint.py): a checkpoint of another model is named, a damaged
one is skipped for the newest readable one by training, eval.py and translate.py."""

import os
import shutil

import pytest

from conftest import run, steps_in, tiny, train
from transformer import checkpoint, config_lib
from transformer.tokenizer import TOKENIZER_FILE, Tokenizer
from transformer.translator import restore_run


@pytest.mark.xdist_group('trained')
def test_checkpoint_of_another_model_size_names_the_mismatch(trained):
    """What resuming, eval.py and translate.py report (train.py exits with it, one line per
    parameter), for a config whose model does not fit the run's checkpoints."""
    workdir = str(trained[0])
    config = config_lib.load_run_config(workdir)
    config.model.variant = 'mini'
    tokenizer = Tokenizer.load(os.path.join(workdir, TOKENIZER_FILE))
    with pytest.raises(checkpoint.CheckpointMismatchError) as error:
        restore_run(config, workdir, tokenizer)
    assert 'does not fit this model' in str(error.value)
    expected = 'params.decoder.0.cross_attention.key.kernel: checkpoint (32, 4, 8), model (128, 4, 32)'
    assert expected in str(error.value)
    config.model.variant = 'tiny'
    config.model.scan_layers = True
    with pytest.raises(checkpoint.CheckpointMismatchError, match=(
            r'holds unrolled \(model.scan_layers=False\) layers, but this model\'s are scanned '
            r'\(model.scan_layers=True\). Set --config.model.scan_layers=False')):
        restore_run(config, workdir, tokenizer)


def test_a_damaged_latest_checkpoint_is_skipped_and_training_resumes_from_the_one_before(
        tmp_path, data_dir):
    workdir = tmp_path / 'run'
    args = ('--config.train.checkpoint_every=2', '--config.train.eval_every=100')
    assert train(data_dir, workdir, '--config.train.num_steps=6', *args).returncode == 0
    assert steps_in(workdir) == [2, 4, 6]
    sharding_file = workdir / 'checkpoints' / '6' / 'state' / '_sharding'
    sharding_file.write_bytes(sharding_file.read_bytes()[:10])  # truncated
    out = train(data_dir, workdir, '--config.train.num_steps=8', *args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'Checkpoint {workdir}/checkpoints/6 is unreadable' in out.stderr
    assert 'Resumed from step 4' in out.stderr
    assert steps_in(workdir) == [4, 6, 8]  # step 6 trained again; the damaged one kept aside
    assert (workdir / 'checkpoints' / '6.unreadable' / 'state' / '_sharding').exists()


@pytest.mark.xdist_group('trained')
def test_eval_and_translate_use_the_newest_readable_checkpoint(trained, tmp_path, data_dir):
    workdir = tmp_path / 'copy'
    shutil.copytree(trained[0], workdir)
    (workdir / 'checkpoints' / '20' / 'state' / '_sharding').write_text('{not json')
    out = run('translate.py', f'--workdir={workdir}', input='twenty-one\n')
    assert 'checkpoints/20 is unreadable' in out.stderr and len(out.stdout.splitlines()) == 1
    out = run('eval.py', *tiny(data_dir, workdir, '--average_last=2', '--split=validation'))
    assert 'step 10,' in out.stdout  # the newest readable one alone
    assert 'Only 1 readable checkpoint(s)' in out.stderr
    (workdir / 'checkpoints' / '10' / 'state' / '_sharding').write_text('')
    out = run('translate.py', f'--workdir={workdir}', input='twenty-one\n', check=False)
    assert out.returncode == 1
    assert 'None of the 2 checkpoints' in out.stderr.splitlines()[-1]
