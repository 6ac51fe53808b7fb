"""Regenerates the figures of docs/transformer-networks.md from the code and trained runs.

    make figures                      # the workdirs the README's commands write
    python docs/make_figures.py --default_workdir runs/default --out docs/figures

The positional-encoding and learning-rate figures, and the diagrams of docs/diagrams.py
(architecture, attention shapes, masks, label smoothing, KV cache), need no run. The cross-attention figure
needs a trained default-task workdir (``make train``); without one it is skipped, and the
script says so and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the configs package lives at the repository root

import diagrams  # noqa: E402  (docs/diagrams.py, beside this script)

from configs import default as default_config  # noqa: E402
from configs import multi30k as multi30k_config  # noqa: E402
from transformer import config_lib  # noqa: E402
from transformer.model import sinusoidal_encoding  # noqa: E402
from transformer.tokenizer import BOS_ID, EOS_ID  # noqa: E402
from transformer.translator import Translator  # noqa: E402

# An example that needs reordering: German writes the day before the month.
EXAMPLE = 'March 14, 1975'


def save(fig, out_dir: str, name: str) -> str:
    """Lays ``fig`` out (constrained-layout figures place themselves) and writes it with
    ``diagrams.save``, which also reports its smallest text at 800 px."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    return diagrams.save(fig, out_dir, name)


def positional_encoding(out_dir: str) -> str:
    """The sinusoidal encoding of positions 0-99 for d_model = 128."""
    pe = np.asarray(sinusoidal_encoding(jnp.arange(100), 128))
    with plt.rc_context(diagrams.style(13)):
        fig, ax = plt.subplots(figsize=(8, 4))
        image = ax.imshow(pe, aspect='auto', cmap='RdBu', vmin=-1, vmax=1)
        ax.set(xlabel='channel (even: sin, odd: cos)', ylabel='position',
               title='Sinusoidal positional encoding, d_model = 128')
        fig.colorbar(image, ax=ax)
        return save(fig, out_dir, 'positional_encoding.png')


def learning_rate(out_dir: str) -> str:
    """The schedules of configs/default.py (the paper's) and configs/multi30k.py (linear)."""
    with plt.rc_context(diagrams.style(13)):
        fig, ax = plt.subplots(figsize=(8, 4))
        for name, module in (('configs/default.py', default_config),
                             ('configs/multi30k.py', multi30k_config)):
            config = module.get_config()
            steps = np.arange(config.train.num_steps)
            rates = np.asarray(config_lib.make_schedule(config)(steps))
            ax.plot(steps, rates, label=f'{name}: {config.train.schedule}, warmup '
                                        f'{config.train.warmup_steps}')
        ax.set(xlabel='step', ylabel='learning rate', title='Learning-rate schedules')
        ax.legend()
        return save(fig, out_dir, 'learning_rate.png')


def cross_attention(workdir: str, out_dir: str, sentence: str = EXAMPLE) -> str:
    """Cross-attention of each decoder layer (mean over heads) while it reads its own
    beam-search translation of ``sentence`` (the run's eval settings, last checkpoint)."""
    from flax import nnx
    translator = Translator.from_workdir(workdir)
    model, tokenizer = nnx.merge(translator.graphdef, translator.params), translator.tokenizer
    output = translator.translate([sentence])[0]
    src_ids = tokenizer.encode(sentence) + [EOS_ID]
    tgt_ids = tokenizer.encode(output) + [EOS_ID]
    weights = model.cross_attention_weights(jnp.asarray([src_ids]),
                                            jnp.asarray([[BOS_ID] + tgt_ids[:-1]]))
    weights = np.asarray(weights)[:, 0].mean(axis=1)  # [layers, t, s]
    pieces = tokenizer.sp.id_to_piece

    def label(i):
        return '</s>' if i == EOS_ID else pieces(i)

    layers = weights.shape[0]
    with plt.rc_context({'font.size': 14}):
        fig, axes = plt.subplots(1, layers, figsize=(3.6 * layers + 1.5, 4.6), squeeze=False,
                                 sharey=True, layout='constrained')
        for n, ax in enumerate(axes[0]):
            image = ax.imshow(weights[n], cmap='Greys', vmin=0, vmax=1)
            ax.set_xticks(range(len(src_ids)), [label(i) for i in src_ids], rotation=60)
            ax.set_yticks(range(len(tgt_ids)), [label(i) for i in tgt_ids])
            ax.set(title=f'decoder layer {n + 1}', xlabel='source piece')
        axes[0][0].set_ylabel(f'output piece\n({output})')
        fig.colorbar(image, ax=axes[0].tolist(), label='attention weight', shrink=0.8)
        fig.suptitle(f'Cross-attention, mean over heads: "{sentence}"')
    return save(fig, out_dir, 'cross_attention.png')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--default_workdir', default='runs/default')
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'figures'))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    positional_encoding(args.out)
    learning_rate(args.out)
    for draw in diagrams.ALL:  # drawn from the code: architecture, shapes, masks, loss, cache
        draw(args.out)
    if not os.path.isfile(os.path.join(args.default_workdir, 'metrics.jsonl')):
        print(f'{args.default_workdir}: not a trained workdir; train it first (make train), '
              'the cross-attention figure is skipped', file=sys.stderr)
        return 1
    cross_attention(args.default_workdir, args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
