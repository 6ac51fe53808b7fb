"""Sharding: the mesh, the rules, and proofs that a sharded or multi-process run equals one device.

The multi-device cases run in subprocesses whose CPU is split into 8 devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8); the test process keeps one device.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import default
from conftest import ROOT, load_config, make_model, tiny
from transformer import compile_check, config_lib, sharding, writers
from transformer.tokenizer import TOKENIZER_FILE, Tokenizer
from transformer.translator import restore_run

RULES = default.get_config().mesh.rules.to_dict()


def devices_env(n: int) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    return dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS='cpu')


def test_mesh_shape_takes_the_rest_and_names_what_is_wrong():
    assert sharding.mesh_shape(-1, 1, 1, 8) == (8, 1, 1)
    assert sharding.mesh_shape(2, -1, 2, 8) == (2, 2, 2)
    with pytest.raises(sharding.MeshError, match='needs 8 devices, but 4 are visible'):
        sharding.mesh_shape(2, 2, 2, 4)
    with pytest.raises(sharding.MeshError, match='do not divide'):
        sharding.mesh_shape(-1, 3, 1, 8)
    with pytest.raises(sharding.MeshError, match='at most one may be -1'):
        sharding.mesh_shape(-1, -1, 1, 8)


@pytest.mark.parametrize('overrides', [{}, dict(pre_ln=True, positional='learned'),
                                       dict(share_embeddings=False)])
def test_every_parameter_names_its_axes(overrides):
    model = make_model(**overrides)
    for path, var in jax.tree_util.tree_leaves_with_path(
            nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = var.get_metadata().get('logical_axes')
        assert names is not None and len(names) == var.ndim, jax.tree_util.keystr(path)
        assert set(names) <= set(RULES), names


def test_rules_map_logical_axes_to_the_mesh():
    mesh = jax.sharding.AbstractMesh((2, 2, 2), sharding.MESH_AXES)
    assert sharding.spec_for(('embed', 'heads', 'kv'), (32, 4, 8), mesh, RULES) == \
        P('fsdp', 'tensor', None)
    assert sharding.spec_for(('vocab', 'embed'), (64, 32), mesh, RULES) == P('tensor', 'fsdp')
    # A dimension the mesh axis does not divide stays whole instead of failing.
    assert sharding.spec_for(('vocab', 'embed'), (63, 32), mesh, RULES) == P(None, 'fsdp')
    # Pure data parallelism: every parameter replicated.
    assert sharding.spec_for(('embed', 'mlp'), (32, 64), mesh, dict(RULES, embed='', mlp='')) \
        == P(None, None)
    with pytest.raises(sharding.MeshError, match="logical axis 'rows'"):
        sharding.spec_for(('rows',), (4,), mesh, RULES)


def test_sharded_train_step_equals_the_one_device_step():
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tests/workers/sharded_step.py')],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    assert [r['mesh'] for r in results] == [dict(data=8, fsdp=1, tensor=1),
                                            dict(data=2, fsdp=2, tensor=2)]
    assert results[1]['model']['scan_layers'] and results[1]['model']['ffn'] == 'swiglu'
    for r in results:
        assert r['tokens'] == r['ref_tokens']
        assert abs(r['loss'] - r['ref_loss']) <= 1e-5 * abs(r['ref_loss']), r
        assert r['gradient_diff'] <= 1e-5, r
        assert r['param_diff'] <= 1e-5, r
        assert r['misplaced'] == [], r
    assert results[0]['split_params'] == 0          # data=8: every parameter replicated
    assert results[1]['split_params'] > 0


def test_compile_only_builds_the_step_for_an_8_device_mesh(tmp_path, data_dir):
    """train.py --compile_only over 8 CPU devices split three ways: nothing runs or is written."""
    out = subprocess.run(
        [sys.executable, 'train.py', *tiny(data_dir, tmp_path / 'w'), '--compile_only',
         '--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2'],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=devices_env(8))
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'model.variant=tiny for mesh data=2 x fsdp=2 x tensor=2 over 8 devices' in out.stderr
    assert json.loads(out.stdout)['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2}
    assert not os.path.exists(tmp_path / 'w')  # shapes only: nothing trained, nothing written


@pytest.mark.parametrize('overrides,devices,named', [
    (['--config.mesh.data=3'], 1, 'config.mesh data=3 x fsdp=1 x tensor=1 needs 3 devices'),
    (['--config.train.batch_size=12'], 8, 'config.train.batch_size=12 rows cannot be split'),
    (['--config.mesh.rules.mlp=model'], 1, "config.mesh.rules.mlp='model'"),
])
def test_bad_mesh_or_batch_is_named_before_any_work(tmp_path, data_dir, overrides,
                                                    devices, named):
    out = subprocess.run([sys.executable, 'train.py', *tiny(data_dir, tmp_path / 'w', *overrides)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=devices_env(devices))
    assert out.returncode != 0
    assert named in out.stderr
    assert not (tmp_path / 'w' / 'checkpoints').exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _restored_params(workdir):
    """(latest step, its parameters, the parameters at initialisation) of a run."""
    config = config_lib.load_run_config(str(workdir))
    tokenizer = Tokenizer.load(os.path.join(workdir, TOKENIZER_FILE))
    _, params, steps = restore_run(config, str(workdir), tokenizer)
    start = nnx.state(config_lib.make_model(config, tokenizer.vocab_size)(), nnx.Param)
    return steps[-1], params, start


def _relative_distance(params, reference, start) -> float:
    """||params - reference|| / ||reference - start|| over all leaves."""
    def sq(x, y):
        return sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
                   for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
    return (sq(params, reference) / sq(reference, start)) ** 0.5


def _train_losses(workdir) -> list:
    return [r['loss'] for r in writers.read_metrics(str(workdir)) if r['split'] == 'train']


def test_two_processes_train_like_one_process_with_all_devices(tmp_path, data_dir):
    """2 processes x 2 devices (gloo) == 1 process x 4 devices, then restored on 1 device."""
    steps = ['--config.train.num_steps=3', '--config.train.warmup_steps=2', '--config.data.input_shards=2',
             '--config.mesh.data=2', '--config.mesh.tensor=2']
    single = subprocess.run([sys.executable, 'train.py', *tiny(data_dir, tmp_path / 'single', *steps)],
                            capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env=devices_env(4))
    assert single.returncode == 0, single.stderr[-3000:]
    os.makedirs(tmp_path / 'multi')  # the same vocabulary for both runs
    shutil.copy(tmp_path / 'single' / 'tokenizer.model', tmp_path / 'multi')

    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, 'train.py', *tiny(data_dir, tmp_path / 'multi', *steps),
         f'--config.distributed.coordinator_address=localhost:{port}',
         '--config.distributed.num_processes=2', f'--config.distributed.process_id={i}',
         '--config.distributed.timeout_s=120'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=devices_env(2))
        for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:  # a peer that never arrives must not leave the other one running
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert 'Process 1 of 2; 2 local / 4 global devices' in outputs[1][1]

    step_single, params_single, start = _restored_params(tmp_path / 'single')
    step_multi, params_multi, _ = _restored_params(tmp_path / 'multi')
    assert step_single == step_multi == 3
    # The same batches give the same loss; a batch read twice or missed would not.
    np.testing.assert_allclose(_train_losses(tmp_path / 'multi'),
                               _train_losses(tmp_path / 'single'), rtol=1e-5)
    # gloo sums the gradients in another order than one process does, and Adam (eps 1e-9)
    # turns rounding differences in near-zero gradients into visible ones, so compare the
    # runs against how far training moved the parameters: training on half the batch lands
    # at 63% of the update, rounding differences at under 1%.
    distance = _relative_distance(params_multi, params_single, start)
    assert distance < 5e-2, f'multi-process parameters differ by {distance:.2%} of the update'
    # Written on 4 devices, restored on this process's single device.
    assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(params_multi))


def test_a_config_too_big_for_the_chips_exits_naming_the_excess_and_what_fits(capsys):
    """What train.py --compile_only --topology=v5e:2x2 prints and returns (its exit code),
    compiled on this CPU for four TPU v5e chips."""
    # A 50M-piece vocabulary: its embedding, gradient and Adam moments replicated on every
    # chip take ~30 GiB of a v5e's 16; split over the four chips (FSDP) they fit.
    config = load_config('configs/default.py:tiny')
    config.data.vocab_size = 50_000_000
    config.train.batch_size = 4
    config.data.max_source_length = config.data.max_target_length = 2
    assert compile_check.print_report(config, 'v5e:2x2') == 1
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1])
    assert (result['topology'], result['device_kind'], result['devices']) == (
        'v5e:2x2', 'TPU v5 lite', 4)
    assert result['mesh'] == {'data': 4, 'fsdp': 1, 'tensor': 1} and result['fits'] is False
    assert re.search(r'Error: does not fit: [\d.]+ GiB per chip, [\d.]+ GiB over the 16 GiB of '
                     r'TPU v5 lite; it fits with --config.mesh.data=1 --config.mesh.fsdp=-1',
                     err), err[-2000:]
    fix = result['fits_with']['report']
    assert fix['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
    assert fix['fits'] and 0 < fix['hbm_per_chip_gib'] < fix['hbm_capacity_gib'] == 16
    assert 0 < fix['temporaries_gib'] < fix['hbm_per_chip_gib']
    # XLA counts more than the model FLOPs: softmax, loss and Adam, here over 50M pieces.
    assert 1.0 < fix['xla_flops_per_step'] / fix['flops_per_step'] < 2.5
    assert fix['estimated_step_s'] > 0 and 0 < fix['estimated_mfu'] < 1
    with pytest.raises(compile_check.TopologyError, match='expected GENERATION:DIMS'):
        compile_check.report(config, 'v5e-16')
