"""A decoder-only translation model: one causal stack over "source, target".

Each example is read as one sequence: the source (ending in EOS), then the decoder input
(BOS, the target shifted right), so the model predicts the target after seeing the source,
the way a language model continues a prompt. Batches are the encoder-decoder's: a packed
source row and a packed target row are laid side by side, and the mask keeps every example
to itself (segment ids), causal over the target and, with ``prefix_lm``, bidirectional
within the source. The loss is the encoder-decoder's too, on the target tokens only.

Decoding uses the encoder-decoder's interface, so greedy and beam search, ensembles,
checkpoint averaging and MBR work unchanged: ``encode`` runs the source through the stack
and returns every layer's keys and values of the source (the "prompt cache"),
``cross_kv`` passes them on, and ``decode_step`` attends to them and to the target cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from transformer import layers
from transformer.model import Embedder, ModelConfig, TransformerBase, _defaults, layer_stack, rows_per_source

Array = jax.Array


def sequence_mask(segments: Array, positions: Array, is_source: Array, prefix_lm: bool) -> Array:
    """[b, l] segment ids, positions within the example and source flags -> [b, 1, l, l].

    A query sees keys of its own example (segment 0 = padding, seen by nobody) at or before
    its position; with ``prefix_lm`` a source query also sees the whole source.
    """
    same = layers.attention_mask(segments, segments)                       # [b, 1, l, l]
    earlier = positions[:, None, None, :] <= positions[:, None, :, None]
    if prefix_lm:
        earlier = earlier | (is_source[:, None, :, None] & is_source[:, None, None, :])
    return same & earlier


class DecoderOnly(TransformerBase):
    """num_encoder_layers + num_decoder_layers self-attention layers (``layers.EncoderLayer``
    blocks under a sequence mask), the embedding shared between input and output."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.target_embed = Embedder(cfg, rngs=rngs)
        self.output = None if cfg.share_embeddings else layers.Projection(
            (cfg.d_model, cfg.vocab_size), 1, ('embed', 'vocab'), use_bias=False, dtype=cfg.dtype,
            param_dtype=cfg.param_dtype, rngs=rngs)
        block = cfg.block()
        self.decoder = layer_stack(lambda r: layers.EncoderLayer(block, rngs=r),
                                   self.num_layers, cfg.scan_layers, rngs)
        self.decoder_norm = (layers.norm_layer(cfg.norm, cfg.d_model, cfg.dtype, cfg.param_dtype,
                                               rngs) if cfg.pre_ln else None)

    @property
    def num_layers(self) -> int:
        return self.cfg.num_encoder_layers + self.cfg.num_decoder_layers

    def __call__(self, src: Array, tgt_in: Array, src_segments: Array | None = None,
                 tgt_segments: Array | None = None, src_positions: Array | None = None,
                 tgt_positions: Array | None = None, *, dropout_rng: Array | None = None) -> Array:
        """src: [b, s], tgt_in: [b, t] (BOS + target shifted right) -> logits [b, t, V]."""
        src_segments, src_positions = _defaults(src, src_segments, src_positions)
        tgt_segments, tgt_positions = _defaults(tgt_in, tgt_segments, tgt_positions)
        # A target token's position continues its own example's source: [b, t].
        source_length = jnp.sum(tgt_segments[:, :, None] == src_segments[:, None, :], -1)
        segments = jnp.concatenate([src_segments, tgt_segments], 1)             # [b, s + t]
        positions = jnp.concatenate([src_positions, source_length + tgt_positions], 1)
        is_source = jnp.arange(segments.shape[1]) < src.shape[1]
        mask = sequence_mask(segments, positions, jnp.broadcast_to(is_source, segments.shape),
                             self.cfg.prefix_lm)
        rngs = layers.split_rng(dropout_rng, self.num_layers + 1)
        x = self._embed(self.target_embed, jnp.concatenate([src, tgt_in], 1), positions, rngs[0])
        x = self._run_stack(self.decoder, x, rngs[1:],
                            lambda layer, x, rng: layer(x, mask, rng, positions))
        return self.logits(x[:, src.shape[1]:])

    # -- incremental decoding ------------------------------------------------------------

    def encode(self, src: Array, src_segments: Array | None = None,
               src_positions: Array | None = None) -> list[tuple[Array, Array]]:
        """Runs the source through the stack: each layer's keys and values of the source,
        each [b, s, g, dh] (src unpacked: one example per row)."""
        src_segments, src_positions = _defaults(src, src_segments, src_positions)
        is_source = jnp.ones(src.shape, bool)
        mask = sequence_mask(src_segments, src_positions, is_source, self.cfg.prefix_lm)
        x = self.target_embed(src, src_positions)
        prompt = []
        for layer in self._each_layer(self.decoder):
            block = layer.attention_block
            attention_input = block.norm(x) if block.pre_ln else x
            prompt.append(layer.self_attention.project_kv(attention_input, src_positions))
            x = layer(x, mask, None, src_positions)
        return prompt

    def cross_kv(self, encoded: list[tuple[Array, Array]]) -> list[tuple[Array, Array]]:
        """The source's keys and values per layer (``encode`` computed them already)."""
        return encoded

    def decode_step(self, tokens: Array, index: Array, cache: list[layers.KVCache],
                    cross_kv: list[tuple[Array, Array]], src_segments: Array):
        """Target position ``index`` for every row: tokens [b] -> ([b, V] logits, cache).

        The query sees the source (``cross_kv``, its padding masked by ``src_segments``
        [n, s]) and the target cache up to ``index``. With n < b each source serves b / n
        consecutive rows (beams), as in ``EncoderDecoder.decode_step``.
        """
        beams = rows_per_source(tokens, src_segments)
        source_length = jnp.repeat(jnp.sum(src_segments != 0, -1), beams)    # [b]
        positions = (source_length + index)[:, None]                          # [b, 1]
        x = self.target_embed(tokens[:, None], positions)                     # [b, 1, d]
        new_cache = []
        for layer, layer_cache, (src_k, src_v) in zip(self._each_layer(self.decoder), cache,
                                                      cross_kv):
            def attend(z, layer=layer, layer_cache=layer_cache, prefix=(src_k, src_v)):
                out, written = layer.self_attention.attend_cached(
                    z, layer_cache, index, positions=positions, prefix=(*prefix, src_segments != 0))
                new_cache.append(written)
                return out

            x = layer.attention_block(x, attend, None)
            x = layer.ff_block(x, layer.feed_forward, None)
        return self.logits(x)[:, 0], new_cache

    def cross_attention_weights(self, src: Array, tgt_in: Array) -> Array:
        raise NotImplementedError('A decoder-only model has no cross-attention to draw; its '
                                  'attention to the source is part of its self-attention.')
