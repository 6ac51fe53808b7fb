"""The encoder-decoder Transformer (Vaswani et al., 2017) and its size table.

``EncoderDecoder`` exposes the three entry points a translation model needs:
``encode`` (source -> memory), ``decode`` (teacher-forced target logits given the memory)
and ``__call__`` (both), plus ``init_cache`` / ``cross_kv`` / ``decode_step`` for
incremental decoding with a key/value cache.

Token id 0 is padding everywhere. Packed batches carry ``segments`` (which example a
token belongs to, 0 = padding) and ``positions`` (its index within that example); when
they are omitted, each row is one example and padding is wherever the token is 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from transformer import layers
from transformer.layers import Mask, attention_mask, causal_mask  # noqa: F401 (re-exported)
from transformer.tokenizer import PAD_ID

Array = jax.Array

# One table of sizes; adding a size is one line. (d_model, d_ff, heads, encoder, decoder layers)
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    'tiny': (32, 64, 4, 2, 2),       # unit tests
    'mini': (128, 512, 4, 2, 2),     # the embedded default task on a 2-core CPU
    'small': (256, 1024, 4, 3, 3),   # Multi30k-sized data on a CPU
    'base': (512, 2048, 8, 6, 6),    # the paper's base model (63.1M with 37,000 pieces; Table 3: 65M)
    'big': (1024, 4096, 16, 6, 6),   # the paper's big model (214.2M with 37,000 pieces; Table 3: 213M)
}

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
POSITIONAL = ('sinusoidal', 'learned', 'rope')
NORMS = ('layernorm', 'rmsnorm')
ARCHITECTURES = ('encoder_decoder', 'decoder_only')
# Rematerialization: which activations of a layer the backward pass keeps (the rest it
# recomputes from the layer's input). 'dots' keeps the outputs of the projection and
# feed-forward matmuls and recomputes attention, softmax, normalization and dropout.
REMAT_POLICIES = {'none': None, 'full': jax.checkpoint_policies.nothing_saveable,
                  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _invalid(field: str, value, valid: str) -> ValueError:
    return ValueError(f'model.{field}={value!r} is invalid: {valid}.')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of an ``EncoderDecoder`` or a ``DecoderOnly``; build one with
    ``ModelConfig.make``."""
    vocab_size: int
    d_model: int
    d_ff: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    dropout_rate: float = 0.1
    attention_dropout: float = 0.0
    # Word dropout: each input token's embedding (source and decoder input) is zeroed with
    # this probability in training, its positional encoding kept, so the model learns to
    # translate around missing words.
    token_dropout: float = 0.0
    max_len: int = 256                 # longest position the learned table covers
    # 'sinusoidal' (section 3.5), 'learned', or 'rope': rotary positions in self-attention
    # (queries and keys), no absolute encoding added to the embeddings.
    positional: str = 'sinusoidal'
    pre_ln: bool = False               # False: post-LN as in the paper
    norm: str = 'layernorm'            # or 'rmsnorm'
    ffn: str = 'relu'                  # 'relu' | 'gelu' | 'swiglu' | 'geglu' (layers.ffn_width)
    num_kv_heads: int = 0              # 0: as many as query heads; 1: multi-query; else grouped
    qk_norm: bool = False              # RMSNorm of each head's queries and keys
    use_bias: bool = True              # biases of the projections and feed-forward layers
    # 'decoder_only': one stack of num_encoder_layers + num_decoder_layers self-attention
    # layers over "source, target" (transformer/decoder_only.py); with prefix_lm the source
    # prefix attends to itself bidirectionally, else everything is causal.
    architecture: str = 'encoder_decoder'
    prefix_lm: bool = False
    share_embeddings: bool = True      # one matrix for source, target and output (3.4)
    dtype: Any = jnp.float32           # compute dtype
    param_dtype: Any = jnp.float32
    # Operands of the projection and output-layer matmuls (float32 accumulation), forward
    # and backward; None = dtype. bfloat16 with float32 dtype is mixed precision.
    matmul_dtype: Any = None
    attention_impl: str = 'xla'        # layers.ATTENTION_IMPLS: einsums, cuDNN or Pallas
    remat: str = 'none'                # a key of REMAT_POLICIES
    # One nnx.scan over each stack's layers, their parameters stacked on a leading axis:
    # compile time no longer grows with depth. Checkpoints differ in layout (convert_layers).
    scan_layers: bool = False

    @classmethod
    def make(cls, variant: str, vocab_size: int, **kwargs) -> ModelConfig:
        """Looks ``variant`` up in ``SIZES``; ``kwargs`` set the remaining fields (dtypes may
        be given by name). A value that cannot work raises ``ValueError`` naming the field."""
        if variant not in SIZES:
            raise _invalid('variant', variant, f'expected one of {sorted(SIZES)}')
        d_model, d_ff, heads, enc, dec = SIZES[variant]
        for key in ('dtype', 'param_dtype', 'matmul_dtype'):
            if isinstance(kwargs.get(key), str):
                if kwargs[key] not in DTYPES:
                    raise _invalid(key, kwargs[key], f'expected one of {sorted(DTYPES)}')
                kwargs[key] = DTYPES[kwargs[key]]
        return cls(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, num_heads=heads,
                   num_encoder_layers=enc, num_decoder_layers=dec, **kwargs)

    def __post_init__(self):
        if self.positional not in POSITIONAL:
            raise _invalid('positional', self.positional, f'expected one of {POSITIONAL}')
        problem = layers.attention_impl_problem(self.attention_impl, self.attention_dropout)
        if problem:
            raise _invalid('attention_impl', self.attention_impl, problem)
        if self.architecture not in ARCHITECTURES:
            raise _invalid('architecture', self.architecture, f'expected one of {ARCHITECTURES}')
        if self.attention_impl == 'splash' and self.architecture == 'decoder_only':
            raise _invalid('attention_impl', self.attention_impl,
                           "the decoder-only model's source-then-target mask is not a segment "
                           "mask the splash kernel takes; use 'xla' or 'cudnn'")
        if self.prefix_lm and self.architecture != 'decoder_only':
            raise _invalid('prefix_lm', self.prefix_lm,
                           "a prefix is a decoder-only notion; set model.architecture='decoder_only'")
        if self.norm not in NORMS:
            raise _invalid('norm', self.norm, f'expected one of {NORMS}')
        if self.ffn not in layers.ACTIVATIONS:
            raise _invalid('ffn', self.ffn, f'expected one of {tuple(layers.ACTIVATIONS)}')
        if not (0 <= self.num_kv_heads <= self.num_heads
                and self.num_heads % (self.num_kv_heads or self.num_heads) == 0):
            raise _invalid('num_kv_heads', self.num_kv_heads,
                           f'expected 0 (= num_heads) or a divisor of num_heads={self.num_heads}')
        if self.remat not in REMAT_POLICIES:
            raise _invalid('remat', self.remat, f'expected one of {tuple(REMAT_POLICIES)}')
        for key in ('dropout_rate', 'attention_dropout', 'token_dropout'):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise _invalid(key, getattr(self, key), 'expected 0 <= rate < 1')

    def block(self) -> layers.BlockConfig:
        return layers.BlockConfig(
            self.d_model, self.d_ff, self.num_heads, self.dropout_rate, self.attention_dropout,
            self.pre_ln, self.attention_impl, self.norm, self.ffn, self.num_kv_heads,
            self.qk_norm, self.positional == 'rope', self.use_bias, self.dtype, self.param_dtype,
            self.matmul_dtype)


def sinusoidal_encoding(positions: Array, d_model: int) -> Array:
    """The paper's positional encoding (section 3.5), [...] int -> [..., d_model] float32.

    PE(pos, 2i) = sin(pos / 10000^(2i / d_model)), PE(pos, 2i + 1) = cos(same angle):
    sines on even channels, cosines on odd ones, interleaved. Each pair of channels
    rotates at its own frequency, so PE(pos + k) is a fixed linear function of PE(pos).
    """
    i = np.arange(d_model // 2)
    inv_freq = jnp.asarray(1.0 / 10000.0 ** (2 * i / d_model), jnp.float32)  # [d/2]
    angles = positions[..., None].astype(jnp.float32) * inv_freq             # [..., d/2]
    pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)              # [..., d/2, 2]
    return pe.reshape(*positions.shape, d_model)


def normal_init(stddev: float):
    """An initializer drawing from N(0, stddev^2), with the same values jitted or not.

    Under jit XLA folds the sampler's own constant factor and ``stddev`` into one, which
    rounds differently from multiplying by each in turn; the barrier keeps the products
    apart, so the jitted initialization (``steps.init_state``) equals building the model
    eagerly, bit for bit.
    """
    def init(key, shape, dtype=jnp.float32):
        return jax.lax.optimization_barrier(jax.random.normal(key, shape, dtype)) * stddev
    return init


def rows_per_source(tokens: Array, src_segments: Array) -> int:
    """How many consecutive rows of ``tokens`` [b] each source of ``src_segments`` [n, s]
    serves in ``decode_step``: b / n (a beam search's beams), which must be whole."""
    rows, sources = tokens.shape[0], src_segments.shape[0]
    if rows % sources:
        raise ValueError(f'decode_step: {rows} token rows cannot be shared evenly by {sources} '
                         'sources; pass one source per row, or per beam_size rows')
    return rows // sources


def _defaults(tokens: Array, segments: Array | None, positions: Array | None):
    if segments is None:
        segments = (tokens != PAD_ID).astype(jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return segments, positions


class Embedder(nnx.Module):
    """Token embedding scaled by sqrt(d_model), plus a positional encoding (section 3.4-3.5)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        # std d_model^-0.5 times the sqrt(d_model) scale gives unit-variance inputs; the
        # same matrix, transposed, then produces unit-variance logits when it is shared.
        init = normal_init(cfg.d_model ** -0.5)
        self.table = nnx.Param(init(rngs.params(), (cfg.vocab_size, cfg.d_model), cfg.param_dtype),
                               logical_axes=('vocab', 'embed'))
        self.positions = None if cfg.positional != 'learned' else nnx.Param(
            normal_init(0.02)(rngs.params(), (cfg.max_len, cfg.d_model), cfg.param_dtype),
            logical_axes=('length', 'embed'))
        self.d_model = cfg.d_model
        self.absolute_positions = cfg.positional != 'rope'
        self.token_dropout = cfg.token_dropout
        self.dtype = cfg.dtype
        self.matmul_dtype = cfg.matmul_dtype

    def __call__(self, tokens: Array, positions: Array,
                 word_dropout_rng: Array | None = None) -> Array:
        """tokens, positions: [b, l] int -> [b, l, d].

        With ``word_dropout_rng``, each token's embedding is zeroed with probability
        ``cfg.token_dropout`` (not rescaled: a dropped token reads as an unknown word).
        """
        x = jnp.take(self.table[...], tokens, axis=0) * jnp.sqrt(float(self.d_model))
        if word_dropout_rng is not None and self.token_dropout > 0:
            keep = jax.random.bernoulli(word_dropout_rng, 1.0 - self.token_dropout,
                                        tokens.shape)  # [b, l]
            x = x * keep[..., None].astype(x.dtype)
        if not self.absolute_positions:  # rotary: positions enter in self-attention
            return x.astype(self.dtype)
        if self.positions is None:
            pe = sinusoidal_encoding(positions, self.d_model)
        else:
            pe = jnp.take(self.positions[...], positions, axis=0)
        return (x + pe).astype(self.dtype)

    def attend(self, y: Array) -> Array:
        """Output logits with the embedding as pre-softmax matrix: [b, l, d] -> [b, l, V] float32."""
        *lead, d = y.shape
        logits = layers.matmul(y.reshape(-1, d), self.table[...], jnp.float32,  # [b*l, V]
                               self.matmul_dtype or self.dtype, w_transposed=True)
        return logits.reshape(*lead, -1)


class TransformerBase(nnx.Module):
    """What the encoder-decoder and the decoder-only model share: embedding with dropout,
    running a stack of layers (rematerialized, scanned), and the output layer. Subclasses
    set ``cfg``, ``target_embed``, ``output`` (None: the embedding is the output matrix) and
    ``decoder_norm`` (pre-LN's final norm, or None)."""

    def _embed(self, embedder: Embedder, tokens: Array, positions: Array,
               rng: Array | None) -> Array:
        """Embedding, word dropout and dropout: tokens, positions [b, l] -> [b, l, d].

        With word dropout off, ``rng`` alone keys the dropout; with it on, a key split from
        ``rng`` draws which words are dropped.
        """
        word_rng = None
        if rng is not None and self.cfg.token_dropout > 0:
            rng, word_rng = jax.random.split(rng)
        return layers.dropout(embedder(tokens, positions, word_rng), self.cfg.dropout_rate, rng)

    def _run_stack(self, stack, x: Array, rngs: list, call) -> Array:
        """``x`` [b, l, d] through every layer of ``stack``, ``call(layer, x, rng) -> x``, one
        dropout key per layer; rematerialized and scanned as the config says."""
        if self.cfg.remat != 'none':
            # Inside a scan XLA cannot merge the recomputation back into the forward pass,
            # so the CSE guard is needed only when unrolled.
            call = nnx.remat(call, policy=REMAT_POLICIES[self.cfg.remat],
                             prevent_cse=not self.cfg.scan_layers)
        if not self.cfg.scan_layers:
            for layer, rng in zip(stack, rngs):
                x = call(layer, x, rng)
            return x
        keys = None if rngs[0] is None else jnp.stack(rngs)  # [layers] keys
        scan = nnx.scan(lambda x, layer, rng: call(layer, x, rng),
                        in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        return scan(x, stack, keys)

    def _each_layer(self, stack) -> list[nnx.Module]:
        """The layers of a stack one by one (for decoding, which runs them unrolled)."""
        if not self.cfg.scan_layers:
            return list(stack)
        graphdef, state = nnx.split(stack)
        count = jax.tree.leaves(state)[0].shape[0]
        return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                for i in range(count)]

    def init_cache(self, batch_size: int, max_len: int) -> list[layers.KVCache]:
        """Empty self-attention caches, one per layer of ``self.decoder``: keys
        [b, g, dh, max_len] and values [b, g, max_len, dh] for g K/V heads (``num_kv_heads``,
        or all heads), as ``layers.KVCache`` lays them out."""
        cfg = self.cfg
        heads, d_head = cfg.num_kv_heads or cfg.num_heads, cfg.d_model // cfg.num_heads
        count = len(jax.tree.leaves(nnx.state(self.decoder))[0]) if cfg.scan_layers else len(self.decoder)
        return [{'k': jnp.zeros((batch_size, heads, d_head, max_len), cfg.dtype),
                 'v': jnp.zeros((batch_size, heads, max_len, d_head), cfg.dtype)}
                for _ in range(count)]

    def logits(self, y: Array) -> Array:
        """[b, t, d] decoder states -> [b, t, V] float32 logits."""
        if self.decoder_norm is not None:
            y = self.decoder_norm(y)
        if self.output is None:
            return self.target_embed.attend(y)
        *lead, d = y.shape
        logits = layers.matmul(y.reshape(-1, d), self.output.kernel[...], jnp.float32,  # [b*t, V]
                               self.cfg.matmul_dtype or self.cfg.dtype)
        return logits.reshape(*lead, -1)


class EncoderDecoder(TransformerBase):
    """The Transformer of "Attention Is All You Need": N encoder and N decoder layers."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        block = cfg.block()
        self.source_embed = Embedder(cfg, rngs=rngs)
        self.target_embed = self.source_embed if cfg.share_embeddings else Embedder(cfg, rngs=rngs)
        self.output = None if cfg.share_embeddings else layers.Projection(
            (cfg.d_model, cfg.vocab_size), 1, ('embed', 'vocab'), use_bias=False, dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs)
        self.encoder = layer_stack(lambda r: layers.EncoderLayer(block, rngs=r),
                                   cfg.num_encoder_layers, cfg.scan_layers, rngs)
        self.decoder = layer_stack(lambda r: layers.DecoderLayer(block, rngs=r),
                                   cfg.num_decoder_layers, cfg.scan_layers, rngs)
        norm = (cfg.norm, cfg.d_model, cfg.dtype, cfg.param_dtype, rngs)
        # Pre-LN leaves the residual stream unnormalised: normalise each stack's output.
        self.encoder_norm = layers.norm_layer(*norm) if cfg.pre_ln else None
        self.decoder_norm = layers.norm_layer(*norm) if cfg.pre_ln else None

    # -- full-sequence passes ------------------------------------------------------------

    def encode(self, src: Array, src_segments: Array | None = None,
               src_positions: Array | None = None, *, dropout_rng: Array | None = None) -> Array:
        """src: [b, s] token ids -> encoder output [b, s, d]."""
        src_segments, src_positions = _defaults(src, src_segments, src_positions)
        rngs = layers.split_rng(dropout_rng, self.cfg.num_encoder_layers + 1)
        x = self._embed(self.source_embed, src, src_positions, rngs[0])
        mask = Mask(src_segments, src_segments)
        x = self._run_stack(self.encoder, x, rngs[1:],
                            lambda layer, x, rng: layer(x, mask, rng, src_positions))
        return x if self.encoder_norm is None else self.encoder_norm(x)

    def decode(self, tgt_in: Array, encoded: Array, src_segments: Array,
               tgt_segments: Array | None = None, tgt_positions: Array | None = None, *,
               dropout_rng: Array | None = None) -> Array:
        """Teacher-forced decoder pass.

        Args:
          tgt_in: [b, t] decoder inputs (BOS followed by the target shifted right).
          encoded: [b, s, d] from ``encode``.
          src_segments: [b, s] source segment ids (``src != 0`` when unpacked).
        Returns:
          [b, t, V] float32 logits; logits[:, i] predicts the token after tgt_in[:, :i+1].
        """
        y, _ = self._decoder_stack(tgt_in, encoded, src_segments, tgt_segments, tgt_positions,
                                   dropout_rng)
        return self.logits(y)

    def _decoder_stack(self, tgt_in, encoded, src_segments, tgt_segments, tgt_positions,
                       dropout_rng, return_weights: bool = False):
        """Decoder states [b, t, d] and, if asked, each layer's cross-attention weights."""
        tgt_segments, tgt_positions = _defaults(tgt_in, tgt_segments, tgt_positions)
        rngs = layers.split_rng(dropout_rng, self.cfg.num_decoder_layers + 1)
        y = self._embed(self.target_embed, tgt_in, tgt_positions, rngs[0])
        self_mask = Mask(tgt_segments, tgt_segments, causal=True)
        cross_mask = Mask(tgt_segments, src_segments)

        def call(layer, y, rng, **kwargs):
            return layer(y, layer.cross_attention.project_kv(encoded), self_mask, cross_mask,
                         rng, positions=tgt_positions, **kwargs)

        if not return_weights:
            return self._run_stack(self.decoder, y, rngs[1:], call), []
        weights = []
        for layer, rng in zip(self._each_layer(self.decoder), rngs[1:]):
            y, w = call(layer, y, rng, return_weights=True)
            weights.append(w)
        return y, weights

    def cross_attention_weights(self, src: Array, tgt_in: Array) -> Array:
        """Where each target position looks in the source, per decoder layer and head.

        src: [b, s], tgt_in: [b, t] (BOS + target shifted right), unpacked, no dropout.
        Returns [layers, b, h, t, s] float32; row (l, n, h, i) sums to 1 over the source.
        """
        src_segments, src_positions = _defaults(src, None, None)
        encoded = self.encode(src, src_segments, src_positions)
        _, weights = self._decoder_stack(tgt_in, encoded, src_segments, None, None, None,
                                         return_weights=True)
        return jnp.stack(weights)

    def __call__(self, src: Array, tgt_in: Array, src_segments: Array | None = None,
                 tgt_segments: Array | None = None, src_positions: Array | None = None,
                 tgt_positions: Array | None = None, *, dropout_rng: Array | None = None) -> Array:
        """src: [b, s], tgt_in: [b, t] -> logits [b, t, V] float32."""
        enc_rng, dec_rng = layers.split_rng(dropout_rng, 2)
        src_segments, src_positions = _defaults(src, src_segments, src_positions)
        encoded = self.encode(src, src_segments, src_positions, dropout_rng=enc_rng)
        return self.decode(tgt_in, encoded, src_segments, tgt_segments, tgt_positions,
                           dropout_rng=dec_rng)

    # -- incremental decoding ------------------------------------------------------------

    def cross_kv(self, encoded: Array) -> list[tuple[Array, Array]]:
        """Cross-attention keys and values of every decoder layer, computed once per source.

        encoded: [b, s, d] -> per layer (k, v), each [b, s, g, dh] (g K/V heads).
        """
        return [layer.cross_attention.project_kv(encoded)
                for layer in self._each_layer(self.decoder)]

    def decode_step(self, tokens: Array, index: Array, cache: list[layers.KVCache],
                    cross_kv: list[tuple[Array, Array]], src_segments: Array):
        """Decodes one position for every row.

        Args:
          tokens: [b] the input token at position ``index`` (BOS at index 0).
          index: scalar int position.
          cache: from ``init_cache`` or the previous step.
          cross_kv: from ``cross_kv``.  src_segments: [n, s] (``src != 0``).
            With n < b, each source serves b / n consecutive rows (a beam search's beams),
            which read one copy of its keys and values instead of one each.
        Returns:
          ([b, V] float32 logits for position ``index + 1``, updated cache).
        """
        positions = jnp.full((tokens.shape[0], 1), index, jnp.int32)
        y = self.target_embed(tokens[:, None], positions)                  # [b, 1, d]
        beams = rows_per_source(tokens, src_segments)
        cross_mask = Mask(jnp.ones((src_segments.shape[0], beams), jnp.int32),
                          (src_segments != 0).astype(jnp.int32))           # [n, b/n] to [n, s]
        new_cache = []
        for layer, layer_cache, kv in zip(self._each_layer(self.decoder), cache, cross_kv):
            y, layer_cache = layer.step(y, kv, cross_mask, layer_cache, index)
            new_cache.append(layer_cache)
        return self.logits(y)[:, 0], new_cache


def layer_stack(make_layer, count: int, scanned: bool, rngs: nnx.Rngs) -> nnx.Module:
    """``count`` layers from ``make_layer(rngs)``: a list, or, ``scanned``, one module whose
    parameters have a leading [count] axis (its logical name None: never sharded)."""
    if not scanned:
        return nnx.List([make_layer(rngs) for _ in range(count)])

    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return make_layer(rngs)

    stack = make(rngs)
    for _, variable in nnx.iter_graph(stack):
        if isinstance(variable, nnx.Variable) and 'logical_axes' in variable.get_metadata():
            axes = variable.get_metadata()['logical_axes']
            variable.set_metadata('logical_axes', (None, *axes))
    return stack


def convert_layers(params: nnx.State, like: nnx.State) -> nnx.State:
    """``params`` of one model in the layer layout of ``like`` (the params, abstract or not,
    of the same model with the other ``scan_layers``): stacks or unstacks each layer stack.

    The two compute the same function (a scanned model with converted parameters gives the
    unrolled model's outputs), so a checkpoint can move between the forms.
    """
    pure, target = nnx.to_pure_dict(params), nnx.to_pure_dict(like)
    for name in ('encoder', 'decoder'):
        if name not in pure:  # a decoder-only model has one stack
            continue
        stack, wanted = pure[name], target[name]
        if (0 in stack) == (0 in wanted):
            continue  # already in the wanted layout
        if 0 in stack:  # unrolled {0: layer, 1: layer, ...} -> one stacked layer
            pure[name] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                      *(stack[i] for i in range(len(stack))))
        else:
            count = jax.tree.leaves(stack)[0].shape[0]
            pure[name] = {i: jax.tree.map(lambda a, i=i: a[i], stack) for i in range(count)}
    converted = jax.tree.map(lambda x: x, like)  # a copy: replace_by_pure_dict writes in place
    nnx.replace_by_pure_dict(converted, pure)
    return converted


def count_params(model: nnx.Module | nnx.State) -> int:
    """Number of scalar parameters of a model or of its ``nnx.Param`` state, abstract or not
    (a shared embedding counts once)."""
    params = model if isinstance(model, nnx.State) else nnx.state(model, nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
