"""Converts a trained encoder-decoder run into a CTranslate2 model directory.

    python -m transformer.export_ct2 --workdir runs/m30k_de_en --output runs/m30k_de_en_ct2 \\
        [--average_last=5] [--quantization=int8]

CTranslate2 (``pip install -r benchmarks/requirements.txt``) then decodes the same weights
without JAX. The conversion fills CTranslate2's Python model specification layer by layer:
each self-attention's query/key/value kernels [d, h, dh] become one fused [3 h dh, d] matrix
(cross-attention: the query alone, then fused key/value); our attention has no key bias (it
adds the same amount to all of a query's scores, which softmax ignores), so it is exported as
zeros; the shared embedding is also the output projection; the sinusoidal table is given
explicitly, since CTranslate2's own lays out its channels differently.

Decoding equals ours token for token (tests/test_export_ct2.py) where three settings agree:
the length penalty off (CTranslate2 divides a hypothesis's log-probability by length^alpha,
we by the GNMT penalty ((5 + length) / 6)^alpha); no cap tied to the source length (ours,
``eval.decode_length_offset`` > 0, ends each sentence at source length + offset; CTranslate2
has only the fixed ``max_decode_len``); float32 arithmetic (a run trained with bfloat16
matmul operands decodes in float32 here, so near-ties can break the other way). CTranslate2
must also be allowed to end a hypothesis at the first step (``min_decoding_length=0``; its
default is 1).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from absl import app, flags

from transformer.ct2_translator import EXPORT_FILE, import_ctranslate2

UNSUPPORTED = {'positional': ('rope',), 'ffn': ('swiglu', 'geglu'), 'qk_norm': (True,),
               'architecture': ('decoder_only',), 'scan_layers': (True,)}


def check_supported(model_config) -> None:
    """Raises ValueError naming every ``config.model`` field that has no conversion."""
    problems = [f'config.model.{field}={model_config[field]!r}'
                for field, values in UNSUPPORTED.items() if model_config[field] in values]
    if model_config.num_kv_heads not in (0, _heads(model_config)):
        problems.append(f'config.model.num_kv_heads={model_config.num_kv_heads} '
                        '(grouped-query attention)')
    if problems:
        raise ValueError(f'{", ".join(problems)}: no CTranslate2 conversion here; it converts '
                         "the paper's block and its pre_ln, norm, use_bias, share_embeddings, "
                         'positional=learned and ffn=gelu switches, with layers not scanned')


def _heads(model_config) -> int:
    from transformer import model as model_lib
    return model_lib.SIZES[model_config.variant][2]


def _linear(spec, kernel: np.ndarray, bias: np.ndarray | None) -> None:
    """kernel [in, out] (ours) -> spec.weight [out, in] (CTranslate2's); no bias -> none."""
    spec.weight = np.ascontiguousarray(kernel.T, dtype=np.float32)
    if bias is not None:
        spec.bias = np.asarray(bias, np.float32)


def _norm(spec, norm: dict) -> None:
    spec.gamma = np.asarray(norm['scale'], np.float32)
    if 'bias' in norm:  # RMSNorm has none
        spec.beta = np.asarray(norm['bias'], np.float32)


def _attention(spec, attention: dict, cross: bool) -> None:
    """One attention's kernels [d, h, dh] (out: [h, dh, d]) into ``spec.linear``: fused
    [q; k; v] for self-attention, q then fused [k; v] for cross-attention, then out."""
    def kernel(name):  # [d, h, dh] -> [d, h*dh]
        w = np.asarray(attention[name]['kernel'])
        return w.reshape(w.shape[0], -1)

    def bias(name):  # [h, dh] -> [h*dh]; the key's is zero (see the module docstring)
        b = attention[name].get('bias')
        return np.zeros(kernel(name).shape[1], np.float32) if b is None else np.reshape(b, -1)

    with_bias = 'bias' in attention['query']
    groups = [['query'], ['key', 'value']] if cross else [['query', 'key', 'value']]
    for linear, names in zip(spec.linear, groups):
        _linear(linear, np.concatenate([kernel(n) for n in names], axis=1),
                np.concatenate([bias(n) for n in names]) if with_bias else None)
    out = np.asarray(attention['out']['kernel'])
    _linear(spec.linear[-1], out.reshape(-1, out.shape[-1]), attention['out'].get('bias'))


def _feed_forward(spec, ffn: dict, norm: dict) -> None:
    _linear(spec.linear_0, np.asarray(ffn['wi']['kernel']), ffn['wi'].get('bias'))
    _linear(spec.linear_1, np.asarray(ffn['wo']['kernel']), ffn['wo'].get('bias'))
    _norm(spec.layer_norm, norm)


def _layers(stack: dict) -> list[dict]:
    return [stack[i] for i in sorted(stack)]


def build_spec(model_config, params: dict, pieces: list[str]):
    """CTranslate2's TransformerSpec of an encoder-decoder.

    Args:
      model_config: the run's ``config.model``.
      params: its parameters as nested dicts of arrays (``State.to_pure_dict()``).
      pieces: the SentencePiece pieces, indexed by id (source and target share them).
    """
    ctranslate2 = import_ctranslate2()
    from transformer.model import sinusoidal_encoding
    from transformer.tokenizer import BOS_ID, EOS_ID, UNK_ID

    specs = ctranslate2.specs
    check_supported(model_config)
    spec = specs.TransformerSpec.from_config(
        (len(params['encoder']), len(params['decoder'])), _heads(model_config),
        pre_norm=model_config.pre_ln, rms_norm=model_config.norm == 'rmsnorm',
        # jax.nn.gelu is the tanh approximation; CTranslate2's GELU is the exact (erf) one.
        activation={'relu': specs.Activation.RELU,
                    'gelu': specs.Activation.GELUTanh}[model_config.ffn])
    source_embed = params['source_embed']
    target_embed = params.get('target_embed', source_embed)
    for side, embed in ((spec.encoder, source_embed), (spec.decoder, target_embed)):
        if model_config.positional == 'learned':
            side.position_encodings.encodings = np.asarray(embed['positions'], np.float32)
        else:  # CTranslate2's own sinusoid lays channels out differently: give it ours
            d_model = embed['table'].shape[1]
            side.position_encodings.encodings = np.asarray(
                sinusoidal_encoding(np.arange(model_config.max_len), d_model), np.float32)
    spec.encoder.embeddings[0].weight = np.asarray(source_embed['table'], np.float32)
    spec.decoder.embeddings.weight = np.asarray(target_embed['table'], np.float32)
    output = params.get('output') or {'kernel': np.asarray(target_embed['table']).T}  # [d, V]
    _linear(spec.decoder.projection, output['kernel'], output.get('bias'))
    if model_config.pre_ln:
        _norm(spec.encoder.layer_norm, params['encoder_norm'])
        _norm(spec.decoder.layer_norm, params['decoder_norm'])
    for layer, ours in zip(spec.encoder.layer, _layers(params['encoder'])):
        _attention(layer.self_attention, ours['self_attention'], cross=False)
        _norm(layer.self_attention.layer_norm, ours['attention_block']['norm'])
        _feed_forward(layer.ffn, ours['feed_forward'], ours['ff_block']['norm'])
    for layer, ours in zip(spec.decoder.layer, _layers(params['decoder'])):
        _attention(layer.self_attention, ours['self_attention'], cross=False)
        _norm(layer.self_attention.layer_norm, ours['self_block']['norm'])
        _attention(layer.attention, ours['cross_attention'], cross=True)
        _norm(layer.attention.layer_norm, ours['cross_block']['norm'])
        _feed_forward(layer.ffn, ours['feed_forward'], ours['ff_block']['norm'])
    spec.config.unk_token = pieces[UNK_ID]
    spec.config.bos_token = spec.config.decoder_start_token = pieces[BOS_ID]
    spec.config.eos_token = pieces[EOS_ID]
    spec.config.layer_norm_epsilon = 1e-6  # transformer.layers.norm_layer's
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def convert(workdir: str, output: str, *, average_last: int = 1,
            quantization: str | None = None) -> dict:
    """Converts the run in ``workdir`` (its last checkpoint, or the average of the last
    ``average_last``) into the CTranslate2 model directory ``output``, with the run's
    tokenizer, recaser and decoding settings beside it; returns what export.json records."""
    import jax

    from transformer import config_lib
    from transformer.recase import RECASER_FILE
    from transformer.tokenizer import TOKENIZER_FILE, Tokenizer
    from transformer.translator import restore_run

    config = config_lib.load_run_config(workdir)
    check_supported(config.model)
    if os.path.exists(os.path.join(output, 'model.bin')):
        raise FileExistsError(f'{output} already holds a CTranslate2 model; choose another '
                              '--output or delete it first.')
    tokenizer = Tokenizer.load(os.path.join(workdir, TOKENIZER_FILE))
    _, params, steps = restore_run(config, workdir, tokenizer, average_last)
    params = jax.tree.map(np.asarray, params.to_pure_dict())
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    spec = build_spec(config.model, params, pieces)
    spec.validate()
    spec.optimize(quantization=quantization)
    os.makedirs(output, exist_ok=True)
    spec.save(output)
    for name in (TOKENIZER_FILE, RECASER_FILE):
        if os.path.exists(os.path.join(workdir, name)):
            shutil.copy(os.path.join(workdir, name), os.path.join(output, name))
    e = config.eval
    record = {'workdir': os.path.abspath(workdir), 'checkpoint_steps': steps,
              'quantization': quantization or 'float32', 'beam_size': e.beam_size,
              'length_penalty': e.length_penalty, 'max_decode_len': e.max_decode_len,
              'decode_length_offset': e.decode_length_offset,
              'matmul_dtype': config.model.matmul_dtype,
              'max_source_length': config.data.max_source_length}
    with open(os.path.join(output, EXPORT_FILE), 'w') as f:
        json.dump(record, f, indent=2)
    return record


FLAGS = flags.FLAGS


def define_flags() -> None:  # only when run as a program: importers keep their own flags
    flags.DEFINE_string('workdir', None, 'A trained encoder-decoder run.')
    flags.DEFINE_string('output', None, 'The CTranslate2 model directory to write.')
    flags.DEFINE_integer('average_last', 1, 'Convert the average of the last N checkpoints.')
    flags.DEFINE_enum('quantization', None, ['int8', 'int8_float32', 'int16', 'float16',
                                             'bfloat16', 'int8_float16', 'int8_bfloat16'],
                      "Weights' type in the saved model (default float32); CTranslate2 can also "
                      'convert at load time (compute_type).')
    flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
    del argv
    try:
        record = convert(FLAGS.workdir, FLAGS.output, average_last=FLAGS.average_last,
                         quantization=FLAGS.quantization)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise SystemExit(f'Error: {e}') from None
    print(f'Converted {FLAGS.workdir} (steps {record["checkpoint_steps"]}) to {FLAGS.output} '
          f'({record["quantization"]}).')


if __name__ == '__main__':
    define_flags()
    app.run(main)
