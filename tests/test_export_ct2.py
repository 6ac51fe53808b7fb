"""CTranslate2 conversion (transformer/export_ct2.py): the converted model decodes the same
tokens as ours, greedy and beam 4, for the paper's block and each switch it converts."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import ROOT, load_config
from transformer import config_lib, decode, export_ct2
from transformer.tokenizer import BOS_ID, EOS_ID

ctranslate2 = pytest.importorskip('ctranslate2')
pytestmark = pytest.mark.xdist_group('trained')  # the CLI test uses the trained run

VOCAB, MAX_LEN = 40, 12
PIECES = ['<pad>', '<unk>', '<s>', '</s>'] + [f'p{i}' for i in range(4, VOCAB)]


def random_sources(rows=16, length=10, seed=0):
    """[rows, length] ids: random pieces, EOS, 0-padding (lengths 2 to length - 1)."""
    rng = np.random.default_rng(seed)
    src = np.zeros((rows, length), np.int32)
    for row in src:
        n = rng.integers(2, length)
        row[:n - 1], row[n - 1] = rng.integers(4, VOCAB, n - 1), EOS_ID
    return src


def as_rows(tokens):
    """CTranslate2's hypotheses (no EOS) -> our layout: [rows, MAX_LEN], EOS, 0-padding."""
    out = np.zeros((len(tokens), MAX_LEN), np.int32)
    for row, ids in zip(out, tokens):
        ids = ids + [EOS_ID] if len(ids) < MAX_LEN else ids
        row[:len(ids)] = ids
    return out


@pytest.mark.parametrize('overrides', [
    {},
    {'pre_ln': True, 'norm': 'rmsnorm', 'positional': 'learned', 'ffn': 'gelu',
     'use_bias': False},
    {'share_embeddings': False},
])
def test_converted_model_decodes_the_same_tokens(tmp_path, overrides):
    config = load_config('configs/default.py:tiny')
    config.model.update(dropout_rate=0.0, **overrides)
    model = config_lib.make_model(config, VOCAB)()  # random weights: no ties to hide behind
    params = jax.tree.map(np.asarray, nnx.state(model, nnx.Param).to_pure_dict())
    spec = export_ct2.build_spec(config.model, params, PIECES)
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(tmp_path))
    theirs = ctranslate2.Translator(str(tmp_path), device='cpu')
    src = random_sources()
    for beam in (1, 4):
        if beam == 1:
            ours = decode.greedy_decode(model, jnp.asarray(src), bos_id=BOS_ID, eos_id=EOS_ID,
                                        max_len=MAX_LEN)
        else:
            ours = decode.model_beam_search(model, jnp.asarray(src), beam_size=beam, alpha=0.0,
                                            bos_id=BOS_ID, eos_id=EOS_ID, max_len=MAX_LEN)
        results = theirs.translate_batch([[PIECES[i] for i in row if i] for row in src],
                                         beam_size=beam, length_penalty=0,
                                         min_decoding_length=0, max_decoding_length=MAX_LEN)
        tokens = [[PIECES.index(p) for p in r.hypotheses[0]] for r in results]
        np.testing.assert_array_equal(as_rows(tokens), np.asarray(ours), err_msg=f'beam {beam}')


def test_switches_without_a_conversion_are_refused():
    config = load_config('configs/default.py:tiny,arch=modern')
    with pytest.raises(ValueError, match="positional='rope'.*ffn='swiglu'.*qk_norm=True.*"
                                         r'num_kv_heads=2 \(grouped-query attention\)'):
        export_ct2.check_supported(config.model)


def export(*args):
    return subprocess.run([sys.executable, '-m', 'transformer.export_ct2', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_cli_converts_a_run_and_translates_like_it(trained, tmp_path):
    from transformer.ct2_translator import CT2Translator
    from transformer.translator import Translator

    workdir, output = trained[0], tmp_path / 'ct2'
    out = export('--workdir', str(workdir), '--output', str(output))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f'Converted {workdir} (steps [20])' in out.stdout
    record = json.loads((output / export_ct2.EXPORT_FILE).read_text())
    assert record['checkpoint_steps'] == [20] and record['quantization'] == 'float32'
    again = export('--workdir', str(workdir), '--output', str(output))
    assert again.returncode != 0 and 'already holds a CTranslate2 model' in again.stderr
    lines = ['half past seven', 'twenty one', '', 'three hundred and four', 'ninety nine']
    for beam in (1, 4):
        ours = Translator.from_workdir(str(workdir), beam_size=beam, alpha=0.0)
        theirs = CT2Translator(str(output), beam_size=beam, alpha=0.0)
        assert theirs.translate(lines) == ours.translate(lines)
    out = subprocess.run([sys.executable, 'translate.py', '--engine=ct2', '--workdir',
                          str(output), '--alpha=0', '--beam_size=4'], input='\n'.join(lines),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == theirs.translate(lines)  # theirs: beam 4
    # Serving needs no JAX: the CTranslate2 path imports none of it.
    probe = subprocess.run([sys.executable, '-c', 'import sys, translate; '
                            'from transformer.ct2_translator import CT2Translator; '
                            f'CT2Translator({str(output)!r}).translate(["twenty one"]); '
                            'print("jax" in sys.modules)'],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert probe.stdout.strip() == 'False', probe.stderr[-3000:]
