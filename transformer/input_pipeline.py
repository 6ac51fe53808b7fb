"""Input pipelines: (source, target) strings -> grain -> fixed-shape numpy batches.

A batch is a dict of int32 arrays:
  inputs          [b, s]  source ids followed by EOS, 0-padded;
  decoder_inputs  [b, t]  BOS followed by the target ids (the target shifted right);
  targets         [b, t]  the target ids followed by EOS, 0-padded;
and, for packed training batches (several examples per row),
  inputs_segment_ids, inputs_positions                 [b, s]
  decoder_inputs_segment_ids, decoder_inputs_positions [b, t]
  targets_segment_ids, targets_positions               [b, t].
Fixed shapes mean the train step compiles once.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from transformer.tokenizer import BOS_ID, EOS_ID, Pair, Tokenizer


@dataclasses.dataclass(frozen=True)
class Lengths:
    """Padded lengths; EOS (and BOS on the decoder side) count towards them."""
    source: int
    target: int


def _example(source_ids: list[int], target_ids: list[int]) -> dict[str, np.ndarray]:
    return {'inputs': np.asarray(source_ids + [EOS_ID], np.int32),
            'targets': np.asarray(target_ids + [EOS_ID], np.int32),
            'decoder_inputs': np.asarray([BOS_ID] + target_ids, np.int32)}


class Tokenize(grain.transforms.Map):
    """A (source, target) pair of strings -> unpadded int32 id arrays."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def map(self, pair: Pair):
        return _example(self.tokenizer.encode(pair[0]), self.tokenizer.encode(pair[1]))


class TokenizedPairs(Sequence):
    """Pairs tokenized once, up front: ``[i]`` is ``Tokenize().map(pairs[i])``.

    The training stream visits every pair once per epoch, and a Multi30k run sees ~30
    epochs: encoding once (in SentencePiece's threads) takes the per-example Python work off
    the cores that run the train step. The ids live in two flat arrays (uint16 where the
    vocabulary allows), ~2 bytes a token.
    """
    CHUNK = 100_000  # sentences encoded at a time

    def __init__(self, pairs: Sequence[Pair], tokenizer: Tokenizer):
        dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max else np.int32
        self._sides = []
        for side in (0, 1):
            flats, lengths = [], [np.zeros(1, np.int64)]
            for start in range(0, len(pairs), self.CHUNK):  # bounded lists of Python ints
                ids = tokenizer.encode_all([pair[side] for pair in pairs[start:start + self.CHUNK]])
                lengths.append(np.fromiter(map(len, ids), np.int64, count=len(ids)))
                flats.append(np.fromiter(itertools.chain.from_iterable(ids), dtype,
                                         count=int(lengths[-1].sum())))
            self._sides.append((np.concatenate(flats or [np.zeros(0, dtype)]),
                                np.cumsum(np.concatenate(lengths))))
        self._pairs = len(pairs)

    def __len__(self) -> int:
        return self._pairs

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        source, target = (flat[at[index]:at[index + 1]].astype(np.int32)
                          for flat, at in self._sides)
        eos, bos = np.array([EOS_ID], np.int32), np.array([BOS_ID], np.int32)
        return {'inputs': np.concatenate([source, eos]), 'targets': np.concatenate([target, eos]),
                'decoder_inputs': np.concatenate([bos, target])}


class SampleTokenize(grain.transforms.RandomMap):
    """Like ``Tokenize``, but each side's segmentation is drawn from its ``nbest`` best
    (``Tokenizer.sample_encode``): subword regularization, new pieces every epoch."""

    def __init__(self, tokenizer: Tokenizer, nbest: int, alpha: float):
        self.tokenizer, self.nbest, self.alpha = tokenizer, nbest, alpha

    def random_map(self, pair: Pair, rng: np.random.Generator):
        return _example(*(self.tokenizer.sample_encode(text, self.nbest, self.alpha, rng)
                          for text in pair))


def _shuffled_examples(pairs: Sequence[Pair], tokenizer: Tokenizer, seed: int,
                       subword_nbest: int, subword_alpha: float) -> grain.MapDataset:
    """The endless stream of tokenized examples, reshuffled every epoch.

    With ``subword_nbest`` > 1 (subword regularization) each example's pieces are drawn
    anew every epoch, seeded by its position in the stream, so a resumed run replays them;
    otherwise every pair is tokenized once, up front.
    """
    if subword_nbest > 1:
        ds = grain.MapDataset.source(pairs).shuffle(seed=seed).repeat()
        return ds.random_map(SampleTokenize(tokenizer, subword_nbest, subword_alpha), seed=seed)
    return grain.MapDataset.source(TokenizedPairs(pairs, tokenizer)).shuffle(seed=seed).repeat()


def fits(example, lengths: Lengths) -> bool:
    return len(example['inputs']) <= lengths.source and len(example['targets']) <= lengths.target


def pad(example, lengths: Lengths):
    """Right-pads (and, for evaluation, truncates) every field to its fixed length."""
    out = {}
    for key, value in example.items():
        size = lengths.source if key == 'inputs' else lengths.target
        padded = np.zeros(size, np.int32)
        value = value[:size]
        padded[:len(value)] = value
        out[key] = padded
    return out


def train_dataset(pairs: list[Pair], tokenizer: Tokenizer, lengths: Lengths, batch_size: int,
                  seed: int, *, pack: bool = True, shard_index: int = 0,
                  num_shards: int = 1, subword_nbest: int = 1,
                  subword_alpha: float = 0.5) -> grain.IterDataset:
    """Shuffled (anew each epoch), endless, tokenized, length-filtered batches.

    With ``pack`` each of the ``batch_size`` rows holds as many whole examples as fit
    (first-fit packing), and the batch gains ``<field>_segment_ids`` (1, 2, ... per example
    in the row, 0 = padding) and ``<field>_positions`` (index within the example); the model
    never attends across examples. Without it each row is one zero-padded example.

    Its iterator's ``get_state()`` is small JSON-able state that, restored, replays exactly
    the batches that would have followed: a resumed run sees the same data. With
    ``num_shards`` > 1 it reads only every ``num_shards``-th pair from ``shard_index``.
    ``subword_nbest`` and ``subword_alpha``: see ``_shuffled_examples``.
    """
    ds = _shuffled_examples(pairs[shard_index::num_shards], tokenizer, seed, subword_nbest,
                            subword_alpha)
    ds = ds.filter(lambda ex: fits(ex, lengths))
    if not pack:
        ds = ds.map(lambda ex: pad(ex, lengths))
    # Read in this thread: reader threads would contend for the GIL with the train loop.
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if pack:
        ds = grain.experimental.FirstFitPackIterDataset(
            ds, length_struct={'inputs': lengths.source, 'targets': lengths.target,
                               'decoder_inputs': lengths.target},
            num_packing_bins=batch_size, seed=seed, shuffle_bins=True)
    return ds.batch(batch_size, drop_remainder=True)


def eval_batches(pairs: list[Pair], tokenizer: Tokenizer, lengths: Lengths,
                 batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every pair once, in order, in full batches.

    Over-long examples are truncated (so every sentence gets a score); the last batch is
    filled with all-padding rows, which carry zero weight in every metric.
    """
    ds = grain.MapDataset.source(pairs).map(Tokenize(tokenizer)).map(lambda ex: pad(ex, lengths))
    for batch in ds.batch(batch_size, drop_remainder=False):
        short = batch_size - len(batch['inputs'])
        if short:
            batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)])
                     for k, v in batch.items()}
        yield batch


def count_too_long(pairs: list[Pair], tokenizer: Tokenizer, lengths: Lengths) -> int:
    """How many pairs the training filter drops for their length."""
    tokenized = TokenizedPairs(pairs, tokenizer)
    return sum(not fits(tokenized[i], lengths) for i in range(len(tokenized)))


class ShardedBatches:
    """This process's rows of every global batch, from its own input shards.

    The training stream is cut into ``num_shards`` shards of ``rows_per_shard`` rows per
    batch; process p of P reads shards p*k .. p*k+k-1 (k = num_shards / P) and yields their
    rows side by side. Global batch = all processes' rows in process order, which is the
    same for any P dividing ``num_shards``: a run can move between 1 and 8 hosts and keep
    its data order. The state is kept per shard, so a checkpoint restores on any P too.
    """

    def __init__(self, pairs: list[Pair], tokenizer: Tokenizer, lengths: Lengths,
                 rows_per_shard: int, seed: int, *, pack: bool, num_shards: int,
                 process_index: int = 0, process_count: int = 1, subword_nbest: int = 1,
                 subword_alpha: float = 0.5):
        if num_shards % process_count:
            raise ValueError(f'data.input_shards={num_shards} cannot be split over '
                             f'{process_count} processes; use a multiple of {process_count}.')
        per_process = num_shards // process_count
        self.shards = list(range(process_index * per_process, (process_index + 1) * per_process))
        self.iterators = [iter(train_dataset(pairs, tokenizer, lengths, rows_per_shard, seed,
                                             pack=pack, shard_index=i, num_shards=num_shards,
                                             subword_nbest=subword_nbest,
                                             subword_alpha=subword_alpha))
                          for i in self.shards]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self.iterators]
        return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

    def get_state(self) -> dict:
        """{'shards': {shard index: grain iterator state}} for this process's shards."""
        return {'shards': {str(i): it.get_state() for i, it in zip(self.shards, self.iterators)}}

    def set_state(self, state: dict) -> None:
        saved = state.get('shards', {})
        missing = [i for i in self.shards if str(i) not in saved]
        if missing:
            raise ValueError(f'The checkpoint holds no data state for input shards {missing} '
                             f'(it has {sorted(saved, key=int)}): it was written with another '
                             'data.input_shards. Resume with the value it was trained with.')
        for i, it in zip(self.shards, self.iterators):
            it.set_state(saved[str(i)])
