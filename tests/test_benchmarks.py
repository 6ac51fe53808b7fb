"""The benchmark suite's arithmetic and plumbing (the timed runs themselves live in `make bench`)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import profile
from benchmarks.__main__ import add_utilization, flag_table, ratios, table
from conftest import ROOT
from transformer import flops
from transformer.model import ModelConfig


def test_forward_flops_count_each_matmul_once():
    # small: d=256, d_ff=1024, 3+3 layers; source and target of 32 tokens; vocab 8192.
    d, f, s, t, v = 256, 1024, 32, 32, 8192
    encoder = 3 * (4 * s * d * d + 2 * s * s * d + 2 * s * d * f)
    decoder = 3 * (4 * t * d * d + 2 * t * t * d + 2 * t * d * d + 2 * s * d * d
                   + 2 * t * s * d + 2 * t * d * f)
    cfg = ModelConfig.make('small', v)
    assert flops.forward_flops(cfg, s, t) == 2 * (encoder + decoder + t * d * v)
    assert flops.train_flops(cfg, s, t, 64) == 3 * 64 * flops.forward_flops(cfg, s, t)


def test_utilization_and_ratios_use_the_peaks_of_the_same_run():
    results = [{'case': 'matmul_peaks', 'peak_gflops_float32': 100.0, 'peak_gflops_bfloat16': 200.0},
               {'case': 'train_small_float32', 'dtype': 'float32', 'step_s': 2.0,
                'tokens_per_s': 1024.0, 'model_flops': 100e9},
               {'case': 'torch_train_small_bfloat16', 'dtype': 'bfloat16', 'step_s': 4.0,
                'tokens_per_s': 512.0, 'model_flops': 100e9}]
    add_utilization(results)
    assert results[1]['mfu_vs_float32_peak'] == 0.5 and results[1]['mfu_vs_bfloat16_peak'] == 0.25
    assert ratios(results) == ['train small: ours 1,024 tok/s (float32) / PyTorch 512 tok/s '
                               '(bfloat16, eager) = 2.00x']


def test_the_dropout_mask_case_is_reported_against_its_reference():
    results = [{'case': 'dropout_masks', 'step_s': 0.05, 'reference_step_s': 0.2,
                'elements_per_s': 1.8e8, 'peak_rss_mib': 300.0}]
    assert ratios(results) == ['dropout masks of a small step: 50 ms (a byte per element) vs '
                               '200 ms (jax.random.bernoulli, a word per element) = 0.25x']
    assert '180,000,000 elem/s' in table(results)


def test_mixed_precision_and_loss_head_are_reported_against_float32_and_autodiff():
    results = [{'case': 'train_small_float32', 'dtype': 'float32', 'step_s': 0.2,
                'tokens_per_s': 5000.0},
               {'case': 'train_small_mixed', 'dtype': 'mixed', 'step_s': 0.15,
                'tokens_per_s': 6000.0},
               {'case': 'loss_head', 'step_s': 0.01, 'reference_step_s': 0.04,
                'tokens_per_s': 1e5, 'peak_rss_mib': 300.0}]
    assert ratios(results) == [
        'mixed precision (bfloat16 matmul operands, float32 elsewhere): small step 150 ms vs '
        '200 ms float32 = 0.75x',
        'loss head (logits, smoothed loss and their gradients): 10.0 ms (own gradient) vs '
        '40.0 ms (autodiff through log_softmax) = 0.25x']


def test_unknown_case_is_named():
    out = subprocess.run([sys.executable, '-m', 'benchmarks', '--cases', 'train_huge'],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "Unknown case(s) ['train_huge']" in out.stderr


def test_a_case_runs_in_its_own_process_and_writes_json(tmp_path):
    out_file = tmp_path / 'bench.jsonl'
    out = subprocess.run([sys.executable, '-m', 'benchmarks', '--cases', 'dropout_masks',
                          '--matmul_size', '512'],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, BENCH_OUT=str(out_file)))
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r['case'] for r in records] == ['matmul_peaks', 'dropout_masks']
    assert records[0]['peak_gflops_float32'] > 0 and records[1]['elements_per_s'] > 0


def test_the_accelerator_check_times_a_train_case_and_tabulates_it():
    """benchmarks/accelerator.py on CPU, with the tiny model: the harness a GPU run uses."""
    from benchmarks import accelerator
    result = accelerator.train('tiny', 'xla', 'none', rows=2, length=8)
    assert result['tokens_per_s'] > 0 and result['model_flops'] > 0
    text = accelerator.table([{'case': 'matmul', 'measured_bf16_flops': 1e12},
                              {**result, 'case': 'tiny_xla_none'}])
    assert text.splitlines()[0].startswith('device: cpu; published dense bf16 peak unknown')
    assert '| tiny_xla_none |' in text


def test_decoding_is_reported_against_ctranslate2_float32_with_its_int8_beside():
    results = [{'case': 'beam_small_float32', 'dtype': 'float32', 'tokens_per_s': 1000.0},
               {'case': 'beam_small_bfloat16', 'dtype': 'bfloat16', 'tokens_per_s': 1500.0},
               {'case': 'ct2_beam_small_float32', 'tokens_per_s': 3000.0},
               {'case': 'ct2_beam_small_int8', 'tokens_per_s': 6000.0}]
    assert ratios(results) == ['beam small: ours 1,500 tok/s (bfloat16) / CTranslate2 float32 '
                               '3,000 tok/s = 0.50x; its int8 6,000 tok/s = 0.25x']


def test_profile_classifies_compiled_operations_by_what_they_fuse_and_their_scope():
    """Matmuls by their dot, the model's named parts by scope (also under autodiff, where
    names read 'transpose(jvp(dropout))'), the rest as copies or elementwise."""
    def step(x, w):
        def loss(w):
            with jax.named_scope('dropout'):
                h = jnp.tanh(x @ w) * 1.5
            return jnp.sum(h.T)
        grad = jax.grad(loss)(w)
        with jax.named_scope('optimizer'):
            return w - 0.1 * jnp.sqrt(jnp.abs(grad))

    compiled = jax.jit(step).lower(jnp.ones((64, 32)), jnp.ones((32, 48))).compile()
    instructions, computations = profile.parse_hlo(compiled.as_text())
    kinds = {profile.classify(name, instructions, computations) for name in instructions}
    assert {'matmul', 'dropout', 'optimizer update'} <= kinds
    assert profile.classify('no_such_operation', instructions, computations) is None
    assert profile.torch_kind('aten::addmm', False) == 'matmul'
    assert profile.torch_kind('aten::native_layer_norm_backward', False) == 'normalization'
    assert profile.torch_kind('aten::_foreach_mul_', True) == 'optimizer update'
    assert profile.torch_kind('aten::relu', False) == 'elementwise, other'


def test_profiles_and_flag_sets_are_tabulated_side_by_side():
    results = [{'case': 'profile_train_small', 'step_s': 0.4,
                'ms_by_kind': {'matmul': 300.0, 'dropout': 100.0}},
               {'case': 'torch_profile_train_small', 'step_s': 0.5,
                'ms_by_kind': {'matmul': 200.0, 'elementwise, other': 300.0}}]
    lines = profile.table(results).splitlines()
    assert lines[1].split() == ['matmul', '300', 'ms', '(75%)', '200', 'ms', '(40%)']
    assert lines[-1].split()[-4:] == ['400', 'ms', '500', 'ms']
    flags = [{'case': 'xla_flags_small_default', 'step_s': 0.4, 'first_losses': [8.0, 7.0],
              'library_fusions': {'ynnpack': 10}},
             {'case': 'xla_flags_small_fast_math', 'step_s': 0.3, 'first_losses': [8.0, 7.001],
              'library_fusions': {'ynnpack': 10}},
             {'case': 'xla_flags_small_onednn_dot', 'error': 'partition compile failed'}]
    text = flag_table(flags)
    assert '| default: `(none)` | 400 (1.00x) |  | ynnpack 10 | 0.0e+00 |' in text
    assert '| 300 (0.75x) |  | ynnpack 10 | 1.0e-03 |' in text
    assert 'partition compile failed' in text
