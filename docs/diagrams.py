"""Draws the explanatory diagrams of docs/transformer-networks.md from the code itself.

    python docs/diagrams.py --out docs/figures

Each figure is drawn from what the codebase computes or declares, not from numbers typed
here: the layer counts and widths come from ``transformer.model.SIZES``, the attention
shapes from the docstrings of ``transformer/layers.py`` (a docstring that stops naming a
shape stops the script), the masks from ``attention_mask``, ``causal_mask``, ``Mask`` and
``sequence_mask``, the loss curve from ``smoothed_cross_entropy`` and the cache sizes from
``init_cache``. None needs a trained run.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import re
import sys

import matplotlib

matplotlib.use('Agg')  # files only, no display needed
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the configs package lives at the repository root

from configs import multi30k as multi30k_config  # noqa: E402
from transformer import layers  # noqa: E402
from transformer.decoder_only import sequence_mask  # noqa: E402
from transformer.losses import smoothed_cross_entropy  # noqa: E402
from transformer.model import SIZES, EncoderDecoder, ModelConfig  # noqa: E402

DPI = 110
# Legible when the page shows a figure 800 px wide: every text at least this many points
# after that scaling (``save`` warns otherwise).
MIN_POINTS_AT_800PX = 11
FONT = 15
MONO = 'DejaVu Sans Mono'

# Colours of the diagram boxes, by kind (the legends name them).
ATTENTION, FFN, NORM = '#f9c98f', '#a9cce3', '#f7ec9f'
ATTENTION_PROJ = '#fde3c4'  # a lighter shade of ATTENTION: the projections around it
EMBED, OUTPUT, TENSOR, MASK = '#f5b7b1', '#b8e0b0', '#e5e5e5', '#d7bde2'
GROUP = '#f4f4f4'
# Mask cells: may attend / blocked.
ATTEND, BLOCKED = '#2e86c1', '#eeeeee'


def save(fig, out_dir: str, name: str) -> str:
    """Writes ``fig`` as ``out_dir/name`` (tight bounding box, 110 dpi) and closes it."""
    path = os.path.join(out_dir, name)
    fig.canvas.draw()
    width_px = fig.get_tightbbox(fig.canvas.get_renderer()).width * DPI
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip()]
    smallest = min(sizes) * min(1.0, 800 / width_px)
    fig.savefig(path, dpi=DPI, bbox_inches='tight')
    plt.close(fig)
    print(f'wrote {path} ({width_px:.0f} px wide; smallest text {smallest:.1f} pt at 800 px)')
    if smallest < MIN_POINTS_AT_800PX:
        print(f'warning: {name} has text under {MIN_POINTS_AT_800PX} pt when shown 800 px wide',
              file=sys.stderr)
    return path


def style(font: float = FONT) -> dict:
    return {'font.size': font, 'axes.titlesize': font, 'axes.labelsize': font,
            'xtick.labelsize': font, 'ytick.labelsize': font, 'legend.fontsize': font,
            'figure.titlesize': font + 2}


def _canvas(width: float, height: float):
    """A figure whose one axes spans it, in inches: data (x, y) is x, y inches from the
    lower left, so box sizes can be reasoned about in points."""
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis('off')
    return fig, ax


def _box(ax, x: float, y: float, w: float, h: float, text: str, color: str, **text_kw):
    """A rounded box centred on (x, y) with centred text."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, facecolor=color,
                                edgecolor='#333333', linewidth=1.3, zorder=2,
                                boxstyle='round,pad=0,rounding_size=0.08'))
    if text:
        ax.text(x, y, text, ha='center', va='center', zorder=3, **text_kw)


def _arrow(ax, start, end, color: str = '#333333', **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle='-|>', mutation_scale=18, linewidth=1.5,
                                 color=color, shrinkA=0, shrinkB=0, zorder=1, **kw))


def _path_arrow(ax, points, color: str = '#333333'):
    """A polyline through ``points`` with an arrowhead at the last one."""
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color=color, linewidth=1.5, zorder=1, solid_capstyle='butt')
    _arrow(ax, points[-2], points[-1], color=color)


# -- 1. the architecture ---------------------------------------------------------------------

BOX_W, ONE_LINE, TWO_LINES, GAP = 2.2, 0.5, 0.8, 0.32
RESIDUAL = BOX_W / 2 + 0.2        # from a column's centre to its residual lines
FRAME_W = BOX_W + 0.66            # the dashed frame of a repeated layer
FRAME_PAD, FRAME_LABEL = 0.16, 0.5  # below and above the boxes; room for the count


def _stack(ax, x: float, bottom: float, boxes, residual_side: int) -> list[tuple[float, float]]:
    """Draws ``boxes`` [(text, colour)] upward from ``bottom``, arrows between them, and the
    residual connection from below each sublayer into the 'add & norm' after it, on the
    left (``residual_side`` -1) or right (+1). Returns each box's (bottom, top)."""
    spans, y = [], bottom
    for text, color in boxes:
        h = TWO_LINES if '\n' in text else ONE_LINE
        _box(ax, x, y + h / 2, BOX_W, h, text, color)
        spans.append((y, y + h))
        y += h + GAP
    for (_, top), (next_bottom, _) in zip(spans, spans[1:]):
        _arrow(ax, (x, top), (x, next_bottom))
    side_x, edge_x = x + residual_side * RESIDUAL, x + residual_side * BOX_W / 2
    for i, (text, _) in enumerate(boxes):
        if text == 'add & norm':
            start_y = spans[i - 1][0] - GAP / 2  # on the stream, below the sublayer
            norm_y = sum(spans[i]) / 2
            _path_arrow(ax, [(x, start_y), (side_x, start_y), (side_x, norm_y), (edge_x, norm_y)],
                        color='#555555')
    return spans


def _group(ax, x: float, spans, label: str) -> float:
    """The dashed frame of a layer repeated ``label`` times around its boxes ``spans``, the
    count written at its top. Returns the frame's top."""
    bottom, top = spans[0][0] - FRAME_PAD, spans[-1][1] + FRAME_LABEL
    ax.add_patch(FancyBboxPatch((x - FRAME_W / 2, bottom), FRAME_W, top - bottom,
                                boxstyle='round,pad=0,rounding_size=0.15', facecolor=GROUP,
                                edgecolor='#777777', linestyle='--', linewidth=1.3, zorder=0))
    ax.text(x, top - FRAME_LABEL / 2 + 0.02, label, ha='center', va='center', style='italic')
    return top


def _mask_grid(ax, mask: np.ndarray, labels: list[str], title: str, font: float):
    ax.imshow(mask, cmap=ListedColormap([BLOCKED, ATTEND]), vmin=0, vmax=1)
    n = mask.shape[0]
    ax.set_xticks(range(n), labels, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.tick_params(length=0, pad=2)
    ax.set_xticks(np.arange(-0.5, n), minor=True)
    ax.set_yticks(np.arange(-0.5, n), minor=True)
    ax.grid(which='minor', color='white', linewidth=1.5)
    ax.tick_params(which='minor', length=0)
    ax.set_title(title, fontsize=font, pad=4)


def architecture(out_dir: str) -> str:
    """The encoder-decoder Transformer and, beside it, the decoder-only model, with the
    layer counts and widths of the ``base`` row of ``SIZES``."""
    d_model, d_ff, heads, n_enc, n_dec = SIZES['base']
    if n_enc != n_dec:
        raise RuntimeError(f'base has {n_enc} encoder and {n_dec} decoder layers; the figure '
                           'labels both stacks with one N')
    gap, split = 0.55, 0.45     # between the two frames; around the separating line
    enc_x = 0.1 + FRAME_W / 2
    dec_x = enc_x + FRAME_W + gap
    only_x = dec_x + FRAME_W + split
    width = only_x + FRAME_W / 2 + 0.1
    stack_bottom, embed_y = 2.85, 1.75
    with plt.rc_context(style()):
        fig, ax = _canvas(width, 14.0)  # its height is set once the columns are drawn

        # Inputs and embeddings (one table: the source, target and output share it).
        for x, text in ((enc_x, 'source tokens\n[b, s]'),
                        (dec_x, 'target tokens, shifted\nright [b, t]'),
                        (only_x, '[source ; target]\n[b, s + t]')):
            ax.text(x, 0.55, text, ha='center', va='center')
            _box(ax, x, embed_y, BOX_W, TWO_LINES, 'embedding × √d\n+ positional enc.', EMBED)
            _arrow(ax, (x, 0.95), (x, embed_y - TWO_LINES / 2))
            _arrow(ax, (x, embed_y + TWO_LINES / 2), (x, stack_bottom))

        # Encoder: N x [self-attention, add & norm, feed-forward, add & norm].
        enc = _stack(ax, enc_x, stack_bottom, [
            ('self-attention', ATTENTION), ('add & norm', NORM),
            ('feed-forward', FFN), ('add & norm', NORM)], residual_side=-1)
        enc_top = _group(ax, enc_x, enc, f'× N, N = {n_enc} (base)')

        # Decoder: N x [masked self-attention, add & norm, cross-attention, add & norm,
        # feed-forward, add & norm].
        dec = _stack(ax, dec_x, stack_bottom, [
            ('masked\nself-attention', ATTENTION), ('add & norm', NORM),
            ('cross-attention', ATTENTION), ('add & norm', NORM),
            ('feed-forward', FFN), ('add & norm', NORM)], residual_side=+1)
        dec_top = _group(ax, dec_x, dec, f'× N, N = {n_dec} (base)')

        # The encoder output becomes the keys and values of every cross-attention.
        cross_y = sum(dec[2]) / 2
        route_y, route_x = enc_top + 0.45, enc_x + FRAME_W / 2 + gap / 2
        _path_arrow(ax, [(enc_x, enc_top), (enc_x, route_y), (route_x, route_y),
                         (route_x, cross_y), (dec_x - BOX_W / 2, cross_y)])
        ax.text(enc_x, route_y + 0.1, 'encoder output [b, s, d]:\nkeys and values of\n'
                'every cross-attention', ha='center', va='bottom')

        # Output layer: the embedding table, transposed (shared embeddings), then softmax.
        def head(x, top, out_text) -> float:
            linear_y = top + 0.4 + TWO_LINES / 2
            _arrow(ax, (x, top), (x, linear_y - TWO_LINES / 2))
            _box(ax, x, linear_y, BOX_W, TWO_LINES, 'linear: x Eᵀ\n(E: the embedding)',
                 OUTPUT)
            softmax_y = linear_y + TWO_LINES / 2 + GAP + ONE_LINE / 2
            _arrow(ax, (x, linear_y + TWO_LINES / 2), (x, softmax_y - ONE_LINE / 2))
            _box(ax, x, softmax_y, BOX_W, ONE_LINE, 'softmax', OUTPUT)
            _arrow(ax, (x, softmax_y + ONE_LINE / 2), (x, softmax_y + ONE_LINE / 2 + 0.3))
            ax.text(x, softmax_y + ONE_LINE / 2 + 0.36, out_text, ha='center', va='bottom')
            return softmax_y + ONE_LINE / 2 + 0.36 + 0.55

        dec_out = head(dec_x, dec_top, 'next-token probabilities\n[b, t, V]')

        # Decoder-only: 2N self-attention layers under one sequence mask.
        only = _stack(ax, only_x, stack_bottom, [
            ('self-attention,\nsequence mask', ATTENTION), ('add & norm', NORM),
            ('feed-forward', FFN), ('add & norm', NORM)], residual_side=+1)
        only_top = _group(ax, only_x, only, f'× 2N = {n_enc + n_dec} (base)')
        only_out = head(only_x, only_top, 'probabilities at the\ntarget positions')

        # The two masks the decoder-only stack can use, computed by sequence_mask on one
        # example: a source of 3 tokens, then a target of 2.
        s, t = 3, 2
        segments = jnp.ones((1, s + t), jnp.int32)
        positions = jnp.arange(s + t)[None]
        is_source = positions < s
        labels = ['s'] * s + ['t'] * t
        size, inset_y = 1.1, only_out + 0.55
        for i, (prefix_lm, title) in enumerate(((False, 'causal'), (True, 'prefix-LM'))):
            mask = np.asarray(sequence_mask(segments, positions, is_source, prefix_lm))[0, 0]
            left = only_x - 0.1 - size if i == 0 else only_x + 0.35
            inset = ax.inset_axes((left, inset_y, size, size), transform=ax.transData)
            _mask_grid(inset, mask, labels, title, FONT)
        ax.text(only_x, inset_y + size + 0.5, 'attention mask\n(rows: queries)', ha='center',
                va='bottom')

        header_y = max(dec_out, inset_y + size + 1.25) + 0.25
        ax.text((enc_x + dec_x) / 2, header_y + 0.5, 'Encoder-decoder', ha='center',
                va='center', weight='bold', fontsize=FONT + 2)
        ax.text((enc_x + dec_x) / 2, header_y, f'base: d_model = {d_model}, h = {heads}, '
                f'd_ff = {d_ff}', ha='center', va='center')
        ax.text(only_x, header_y + 0.5, 'Decoder-only', ha='center', va='center',
                weight='bold', fontsize=FONT + 2)
        ax.text(only_x, header_y, 'one stack, no encoder', ha='center', va='center')
        ax.plot([only_x - FRAME_W / 2 - split / 2] * 2, [0.2, header_y + 0.7], color='#999999',
                linewidth=1.2)
        ax.set_ylim(0, header_y + 0.8)
        fig.set_size_inches(width, header_y + 0.8)

        handles = [Patch(facecolor=c, edgecolor='#333333', label=n) for c, n in (
            (EMBED, 'embedding (one table, shared)'), (ATTENTION, 'multi-head attention'),
            (FFN, 'position-wise feed-forward'), (NORM, 'residual add + LayerNorm'),
            (OUTPUT, 'output layer'), (ATTEND, 'mask: may attend'),
            (BLOCKED, 'mask: blocked'))]
        ax.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, 0.0), ncol=2,
                  frameon=False, handlelength=1.4, columnspacing=1.2)
        fig.suptitle('The Transformer: encoder-decoder and decoder-only', x=0.5, y=1.03,
                     fontsize=FONT + 3, weight='bold')
        return save(fig, out_dir, 'architecture.png')


# -- 2. multi-head attention, step by step ---------------------------------------------------

_SHAPE = re.compile(r'\[[a-z][a-z0-9, ]*\]')


def _doc_shape(obj, after: str) -> str:
    """The first shape '[b, q, ...]' in the docstring of ``obj`` after the text ``after``."""
    doc = ' '.join((inspect.getdoc(obj) or '').split())
    start = doc.find(after)
    match = _SHAPE.search(doc, start + len(after)) if start >= 0 else None
    if match is None:
        raise RuntimeError(f'the docstring of {obj.__qualname__} no longer gives a shape after '
                           f'{after!r}; update docs/diagrams.py with the code')
    return match.group(0)


def _einsums(obj) -> list[str]:
    """The einsum specifications in the source of ``obj``, in order."""
    return re.findall(r"einsum\('([a-z,]+->[a-z]+)'", inspect.getsource(obj))


def attention_flow(out_dir: str) -> str:
    """Multi-head attention as data flow, each step with the shape the code's docstrings
    give (a step whose shape the docstrings stop stating stops the script)."""
    mha, dpa = layers.MultiHeadAttention, layers.dot_product_attention
    x_shape = _doc_shape(mha.__call__, 'Attends from ``x``')
    kv_in_shape = _doc_shape(mha.project_kv, '')
    q_shape = _doc_shape(mha.queries, '->')
    k_shape = _doc_shape(dpa, 'k, v:')
    mask_shape = _doc_shape(layers.attention_mask, '->')
    weights_shape = _doc_shape(dpa, 'and the')
    heads_out = _doc_shape(dpa, 'Returns:')
    out_shape = _doc_shape(mha.__call__, 'Returns')
    if _doc_shape(dpa, 'q:') != q_shape or _doc_shape(dpa, 'broadcastable to') != weights_shape:
        raise RuntimeError('MultiHeadAttention and dot_product_attention disagree on shapes')
    if 'sqrt(dh)' not in inspect.getdoc(dpa):
        raise RuntimeError('dot_product_attention no longer documents the 1/sqrt(dh) scale')
    scores_spec, mix_spec = _einsums(dpa)
    letters = re.search(r'Shape letters used throughout: (.*?)\.\n\n', layers.__doc__, re.S)
    if letters is None:
        raise RuntimeError('transformer/layers.py no longer lists its shape letters')

    # The kernels' axes, checked on the base model's attention built from shapes alone.
    d_model, _, heads, _, _ = SIZES['base']
    d_head = d_model // heads
    abstract = nnx.eval_shape(lambda: layers.MultiHeadAttention(d_model, heads, rngs=nnx.Rngs(0)))
    kernels = {name: getattr(abstract, name).kernel.shape for name in ('query', 'key', 'value', 'out')}
    expected = {'query': (d_model, heads, d_head), 'key': (d_model, heads, d_head),
                'value': (d_model, heads, d_head), 'out': (heads, d_head, d_model)}
    if kernels != expected:
        raise RuntimeError(f'attention kernels are {kernels}, the figure draws {expected}')

    width, height = 9.9, 12.2
    qx, kx, vx, w = 1.55, 4.55, 7.55, 2.6     # the Q, K, V columns and their boxes' width
    cx = (qx + kx) / 2                        # the column of scores and what follows
    route_x = 9.3                             # V's way down to the weighted sum
    with plt.rc_context(style()):
        fig, ax = _canvas(width, height)

        def step(x, y, op, shape, color, box_w=w) -> float:
            """A box: the operation (one or two lines) over its result's shape. Returns
            the box's half height."""
            lines = op.count('\n') + 1
            h = 0.55 + 0.35 * lines
            _box(ax, x, y, box_w, h, '', color)
            ax.text(x, y + h / 2 - 0.12, op, ha='center', va='top', zorder=3, linespacing=1.3)
            ax.text(x, y - h / 2 + 0.2, shape, ha='center', va='center', zorder=3, family=MONO,
                    weight='bold')
            return h / 2

        rows = {'in': 10.9, 'proj': 9.1, 'scores': 7.35, 'mask': 5.95, 'softmax': 4.55,
                'mix': 3.15, 'out': 1.55}
        half = step(qx, rows['in'], 'x: queries from', x_shape, TENSOR)
        step((kx + vx) / 2, rows['in'], 'y: keys, values from', kv_in_shape, TENSOR, box_w=4.2)
        ax.text((kx + vx) / 2, rows['in'] + half + 0.1,
                'y = x (self-attention) or the encoder output (cross)', ha='center', va='bottom')
        proj = step(qx, rows['proj'], 'Q = x W_Q\nW_Q: [d, h, dh]', q_shape, ATTENTION_PROJ)
        step(kx, rows['proj'], 'K = y W_K\nW_K: [d, h, dh]', k_shape, ATTENTION_PROJ)
        step(vx, rows['proj'], 'V = y W_V\nW_V: [d, h, dh]', k_shape, ATTENTION_PROJ)
        _arrow(ax, (qx, rows['in'] - half), (qx, rows['proj'] + proj))
        for x in (kx, vx):
            _arrow(ax, ((kx + vx) / 2 + (x - (kx + vx) / 2) * 0.5, rows['in'] - half),
                   (x, rows['proj'] + proj))

        half = step(cx, rows['scores'], f'scores = Q Kᵀ / √dh   ({scores_spec})',
                    weights_shape, ATTENTION, box_w=5.2)
        for x in (qx, kx):
            _arrow(ax, (x, rows['proj'] - proj), (x, rows['scores'] + half))
        step(cx, rows['mask'], 'where(mask, scores, −3.4e38)', weights_shape, MASK, box_w=4.6)
        step(vx + 0.2, rows['mask'], 'mask, 1 = attend', mask_shape, MASK, box_w=2.4)
        _arrow(ax, (vx + 0.2 - 1.2, rows['mask']), (cx + 2.3, rows['mask']))
        step(cx, rows['softmax'], 'weights = softmax over k', weights_shape, ATTENTION,
             box_w=4.6)
        step(cx, rows['mix'], f'weighted sum of V   ({mix_spec})', heads_out, ATTENTION,
             box_w=5.2)
        out = step(cx, rows['out'], 'out = concat(heads) W_O\nW_O: [h, dh, d]', out_shape,
                   ATTENTION_PROJ, box_w=5.2)
        for a, b in (('scores', 'mask'), ('mask', 'softmax'), ('softmax', 'mix'), ('mix', 'out')):
            _arrow(ax, (cx, rows[a] - half), (cx, rows[b] + (out if b == 'out' else half)))
        below_v = rows['proj'] - proj - 0.3
        _path_arrow(ax, [(vx, rows['proj'] - proj), (vx, below_v), (route_x, below_v),
                         (route_x, rows['mix']), (cx + 2.6, rows['mix'])])
        ax.text(route_x + 0.1, (rows['softmax'] + rows['mix']) / 2, 'V', ha='left',
                va='center', weight='bold')

        ax.text(width / 2, 0.45, f'base: d = {d_model}, h = {heads}, dh = d / h = {d_head}',
                ha='center', va='center')
        handles = [Patch(facecolor=c, edgecolor='#333333', label=n) for c, n in (
            (TENSOR, 'input'), (ATTENTION_PROJ, 'learned projection'),
            (ATTENTION, 'attention arithmetic'), (MASK, 'mask'))]
        ax.legend(handles=handles, loc='upper center', bbox_to_anchor=(0.5, 0.02), ncol=4,
                  frameon=False, handlelength=1.2, columnspacing=0.9, handletextpad=0.5)
        # The letters' definitions, two lines, each broken only between definitions.
        items = ' '.join(letters.group(1).split()).split(', ')
        lines = ['']
        for item in items:
            candidate = f'{lines[-1]}, {item}' if lines[-1] else item
            lines[-1:] = [candidate] if len(candidate) <= 62 else [lines[-1] + ',', item]
        legend = '\n'.join(lines)
        ax.text(width / 2, 11.85, legend, ha='center', va='bottom')
        ax.text(width / 2, 12.65, 'Multi-head attention, shape by shape', ha='center',
                va='bottom', fontsize=FONT + 3, weight='bold')
        return save(fig, out_dir, 'attention_flow.png')


# -- 3. masks -------------------------------------------------------------------------------

def masks(out_dir: str) -> str:
    """Padding, causal and packed-segment masks, each computed by ``transformer/layers.py``
    for one row of 6 positions."""
    one_example = jnp.array([[1, 1, 1, 1, 1, 0]])   # 5 tokens, then 1 padding position
    packed = jnp.array([[1, 1, 1, 2, 2, 0]])        # examples of 3 and 2 tokens, 1 padding
    length = packed.shape[1]
    panels = [
        ('padding', f'segments {np.asarray(one_example)[0]}',
         layers.attention_mask(one_example, one_example)),
        ('causal', f'causal_mask({length})', layers.causal_mask(length)),
        ('packed segments', f'segments {np.asarray(packed)[0]}',
         layers.attention_mask(packed, packed)),
    ]
    decoder = np.asarray(layers.Mask(packed, packed, causal=True).dense())[0, 0]
    if not np.array_equal(decoder, np.asarray(panels[1][2] & panels[2][2])[0, 0]):
        raise RuntimeError('Mask(causal=True) is no longer packed & causal')
    with plt.rc_context(style()):
        fig, axes = plt.subplots(1, 3, figsize=(10, 4.4), sharey=True)
        for ax, (name, detail, mask) in zip(axes, panels):
            _mask_grid(ax, np.asarray(mask)[0, 0], [str(i) for i in range(length)],
                       f'{name}\n{detail}', FONT)
            ax.set_xlabel('key position')
        axes[0].set_ylabel('query position')
        fig.legend(handles=[Patch(facecolor=ATTEND, label='may attend'),
                            Patch(facecolor=BLOCKED, edgecolor='#999999', label='blocked')],
                   loc='lower center', bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
        fig.suptitle('Attention masks: which keys (columns) each query (row) may see',
                     y=1.02, weight='bold')
        fig.text(0.5, -0.12, 'Decoder self-attention: causal and packed '
                 '(layers.Mask with causal=True)', ha='center', va='center')
        return save(fig, out_dir, 'masks.png')


# -- 4. label smoothing ---------------------------------------------------------------------

def label_smoothing(out_dir: str) -> str:
    """Label-smoothed loss and plain cross-entropy of ``smoothed_cross_entropy`` against the
    margin m of the target's logit over every other token's (all others equal)."""
    config = multi30k_config.get_config()
    vocab, eps = config.data.vocab_size, config.train.label_smoothing
    margins = np.round(np.arange(0.0, 45.0001, 0.05), 2)
    target = 1
    logits = jnp.zeros((1, len(margins), vocab), jnp.float32).at[0, :, target].set(
        jnp.asarray(margins, jnp.float32))
    loss, nll = smoothed_cross_entropy(logits, jnp.full((1, len(margins)), target), eps)
    loss, nll = np.asarray(loss)[0], np.asarray(nll)[0]
    best = margins[np.argmin(loss)]
    # Where softmax gives the target exactly 1 - eps and each other token eps / (V - 1).
    exact = math.log((1 - eps) * (vocab - 1) / eps)
    if abs(best - exact) > 0.1:
        raise RuntimeError(f'the smoothed loss is lowest at margin {best}, expected {exact:.2f}')

    with plt.rc_context(style()):
        fig, ax = plt.subplots(figsize=(9.5, 5.2))
        ax.plot(margins, loss, color='tab:blue', linewidth=2.5,
                label=f'label-smoothed loss (ε = {eps:g})')
        ax.plot(margins, nll, color='tab:orange', linewidth=2.5, linestyle='--',
                label='plain cross-entropy (ε = 0)')
        ax.axvline(exact, color='#555555', linestyle=':', linewidth=1.5)
        ax.annotate(f'minimum at m = ln((1 − ε)(V − 1) / ε)\n= {exact:.1f}: softmax gives '
                    f'the target 1 − ε', xy=(exact, 0.0), xytext=(exact + 3.5, 5.4),
                    arrowprops=dict(arrowstyle='-|>', color='#555555'), va='center')
        at = {m: float(loss[np.searchsorted(margins, m)]) for m in (10, 20, 40)}
        for m, value in at.items():
            ax.plot([m], [value], 'o', color='tab:blue', markersize=7)
            ax.annotate(f'{value:.2f}', (m, value), xytext=(-12 if m == 10 else 0, 10),
                        textcoords='offset points', ha='right' if m == 10 else 'center',
                        va='bottom')
        slope = (at[40] - at[20]) / 20
        ax.text(35, 0.9, f'rises by {slope:.2f}\nper unit of margin:\nno margin is enough',
                ha='center', va='center', color='tab:blue')
        ax.set(xlabel='margin m: target logit minus every other logit',
               ylabel='loss per token (nats)', xlim=(0, 45), ylim=(-0.2, math.log(vocab) + 0.5))
        ax.set_title(f'Label smoothing penalises overconfidence (V = {vocab:,})', pad=10)
        ax.legend(loc='upper right')
        ax.grid(alpha=0.3)
        return save(fig, out_dir, 'label_smoothing.png')


# -- 5. the key/value cache -----------------------------------------------------------------

def _cache_fill(steps: int, max_len: int) -> np.ndarray:
    """Which cache slots hold a key after each decoding step of a real ``attend_cached``:
    [steps, max_len] bool (a tiny layer; the slots, not the sizes, matter here)."""
    attention = layers.MultiHeadAttention(8, 2, num_kv_heads=1, rngs=nnx.Rngs(0))
    cache = {'k': jnp.zeros((1, 1, 4, max_len)), 'v': jnp.zeros((1, 1, max_len, 4))}
    filled = []
    for index in range(steps):
        x = jax.random.normal(jax.random.key(index), (1, 1, 8))
        _, cache = attention.attend_cached(x, cache, jnp.int32(index))
        filled.append(np.asarray(jnp.any(cache['k'][0] != 0, axis=(0, 1))))
    return np.stack(filled)


def _cache_bytes_per_token(num_kv_heads: int, dtype: str) -> float:
    """Bytes of self-attention cache one generated token takes in all decoder layers of the
    base model, from ``init_cache`` (keys and values)."""
    config = ModelConfig.make('base', vocab_size=8000, num_kv_heads=num_kv_heads, dtype=dtype)
    model = nnx.eval_shape(lambda: EncoderDecoder(config, rngs=nnx.Rngs(0)))
    max_len = 4
    cache = model.init_cache(batch_size=1, max_len=max_len)
    return sum(a.size * a.dtype.itemsize for layer in cache for a in layer.values()) / max_len


def kv_cache(out_dir: str) -> str:
    """Left: the cache filling one slot per step while the new query attends to the slots
    written so far. Right: cache bytes per generated token for MHA, GQA and MQA."""
    steps, max_len = 5, 7
    filled = _cache_fill(steps, max_len)
    state = np.zeros((steps, max_len), int)            # 0 empty, 1 cached, 2 written now
    for index in range(steps):
        if not (filled[index, :index + 1].all() and not filled[index, index + 1:].any()):
            raise RuntimeError(f'after step {index} the cache holds slots {filled[index]}')
        state[index, :index] = 1
        state[index, index] = 2

    d_model, _, heads, _, n_dec = SIZES['base']
    d_head = d_model // heads
    # model.num_kv_heads: 0 (the default) = one K/V head per query head; as arch=modern, half.
    variants = [('MHA', 0), ('GQA', heads // 2), ('MQA', 1)]
    dtypes = ('float32', 'bfloat16')
    kib = {(g, dt): _cache_bytes_per_token(g, dt) / 1024 for _, g in variants for dt in dtypes}
    for (g, dt), value in kib.items():   # 2 (K and V) x layers x g x dh x bytes
        g = g or heads
        expected = 2 * n_dec * g * d_head * jnp.dtype(dt).itemsize / 1024
        if value != expected:
            raise RuntimeError(f'init_cache gives {value} KiB per token for g={g}, {dt}; '
                               f'expected {expected}')

    colors = ['#ffffff', ATTEND, '#e67e22']
    with plt.rc_context(style()):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.0),
                                          gridspec_kw={'width_ratios': [1.25, 1]})
        left.imshow(state, cmap=ListedColormap(colors), vmin=0, vmax=2)
        left.set_xticks(range(max_len))
        left.set_yticks(range(steps), [f'step {i}' for i in range(steps)])
        left.set_xticks(np.arange(-0.5, max_len), minor=True)
        left.set_yticks(np.arange(-0.5, steps), minor=True)
        left.grid(which='minor', color='#888888', linewidth=1)
        left.tick_params(which='both', length=0)
        left.set_xlabel('cache slot (L = max length)')
        left.set_title('K and V of one layer, each [b, L, g, dh]:\nstep t writes slot t')
        left.legend(handles=[
            Patch(facecolor=colors[2], label='new k, v: written, attended'),
            Patch(facecolor=colors[1], label='cached k, v: attended'),
            Patch(facecolor=colors[0], edgecolor='#888888', label='empty: masked out')],
            loc='upper center', bbox_to_anchor=(0.5, -0.2), frameon=False)

        x = np.arange(len(variants))
        bar_w = 0.38
        for i, (dt, color) in enumerate(zip(dtypes, ('tab:blue', 'tab:green'))):
            values = [kib[(g, dt)] for _, g in variants]
            bars = right.bar(x + (i - 0.5) * bar_w, values, bar_w, color=color, label=dt)
            right.bar_label(bars, fmt='%g', padding=2)
        right.set_xticks(x, [f'{name}\ng = {g or heads}' for name, g in variants])
        right.set_ylabel('KiB per generated token')
        right.set_xlabel(f'2 (K, V) × {n_dec} layers × g × {d_head} × bytes')
        right.set_ylim(0, max(kib.values()) * 1.18)
        right.set_title('Cache size, base model,\nall decoder layers')
        right.legend(title='model.dtype', loc='upper right')
        right.spines[['top', 'right']].set_visible(False)
        fig.suptitle('Incremental decoding with a key/value cache', y=1.1, fontsize=FONT + 3,
                     weight='bold')
        return save(fig, out_dir, 'kv_cache.png')


ALL = (architecture, attention_flow, masks, label_smoothing, kv_cache)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'figures'))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for draw in ALL:
        draw(args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
