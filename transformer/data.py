"""Tokenizer and input pipelines: TFDS data sources -> grain -> fixed-shape numpy batches.

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
import functools
import io
import itertools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import grain
import numpy as np
import sentencepiece as spm

log = logging.getLogger('transformer')

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# The decoder's first input for the reverse direction (target -> source) in bidirectional
# training; a piece of its own in tokenizers trained for it. BOS_ID keeps meaning "translate
# source -> target", so decoding never needs to know that a model was trained both ways.
REVERSE_BOS = '<2src>'
TOKENIZER_FILE = 'tokenizer.model'


Pair = tuple[str, str]  # (source sentence, target sentence)


class Tokenizer:
    """A SentencePiece model with pad 0, unk 1, bos 2, eos 3."""

    def __init__(self, model_proto: bytes):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (
                PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError('Tokenizer must use pad=0, unk=1, bos=2, eos=3.')
        self.model_proto = model_proto
        # Memoized per word (bounded: a WMT-sized corpus has millions of distinct words).
        self._word_segmentations = functools.lru_cache(maxsize=1 << 18)(self._segment_word)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def reverse_bos_id(self) -> int | None:
        """The id of ``REVERSE_BOS``, or None for a tokenizer trained without it."""
        i = self.sp.piece_to_id(REVERSE_BOS)
        return None if i == UNK_ID else i

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text.strip())

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, on every core (SentencePiece's own threads)."""
        return self.sp.encode([t.strip() for t in texts], num_threads=os.cpu_count() or 1)

    def sample_encode(self, text: str, nbest: int, alpha: float,
                      rng: np.random.Generator) -> list[int]:
        """A segmentation of ``text`` drawn at random: subword regularization (Kudo, 2018).

        Pieces never cross spaces (SentencePiece splits on whitespace), so a sentence's
        segmentation is its words' side by side and its probability is their product. Each
        word's is drawn independently from its ``nbest`` most likely ones, with probability
        proportional to P(segmentation)^alpha: alpha = 0 draws uniformly, a large alpha keeps
        the best. The draw comes from ``rng`` (not SentencePiece's own generator), so the same
        rng state gives the same pieces and a resumed run replays them.
        """
        ids = []
        for word in text.split():
            candidates, cumulative = self._word_segmentations(word, nbest, alpha)
            pick = np.searchsorted(cumulative, rng.random() * cumulative[-1], side='right')
            ids.extend(candidates[min(int(pick), len(candidates) - 1)])
        return ids

    def _segment_word(self, word: str, nbest: int, alpha: float):
        """(the ``nbest`` best segmentations of ``word``, their cumulative weights)."""
        nbests = self.sp.nbest_encode_as_proto(word, nbest_size=nbest).nbests
        candidates = [[piece.id for piece in n.pieces] for n in nbests] or [self.encode(word)]
        scores = np.array([n.score for n in nbests] or [0.0])  # log P(segmentation)
        return candidates, np.cumsum(np.exp(alpha * (scores - scores.max())))

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; stops at the first EOS and skips padding."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i != PAD_ID:
                out.append(i)
        return self.sp.decode(out)

    def save(self, path: str) -> None:
        with open(path, 'wb') as f:
            f.write(self.model_proto)

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        if not os.path.exists(path):
            raise FileNotFoundError(f'No tokenizer at {path}: train first (train.py) or point '
                                    '--workdir at a trained run.')
        with open(path, 'rb') as f:
            return cls(f.read())


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, model_type: str = 'unigram',
                    character_coverage: float = 1.0, byte_fallback: bool = False,
                    lowercase: bool = False, bidirectional: bool = False) -> Tokenizer:
    """Trains a joint SentencePiece vocabulary on ``texts`` (source and target lines).

    ``lowercase`` case-folds text inside the model's normalizer, so encoding lowercases any
    input and decoding yields lowercase text. ``bidirectional`` reserves ``REVERSE_BOS``.
    """
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t.strip() for t in texts), model_writer=proto,
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            normalization_rule_name='nmt_nfkc_cf' if lowercase else 'nmt_nfkc',
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            user_defined_symbols=[REVERSE_BOS] if bidirectional else [],
            input_sentence_size=2_000_000, shuffle_input_sentence=True, num_threads=1,
            hard_vocab_limit=False, minloglevel=2)
    except RuntimeError as e:
        need = re.search(r'smaller than required_chars\. \d+ vs (\d+)', str(e))
        if not need:
            raise
        raise VocabularyError(
            f'config.data.vocab_size={vocab_size} is too small: the training text needs '
            f'{need.group(1)} pieces for its characters and the special tokens alone. Use at '
            f'least {need.group(1)} (several times more, so that whole words get pieces).') from None
    return Tokenizer(proto.getvalue())


class VocabularyError(ValueError):
    """The requested vocabulary cannot hold the training text's characters."""


def get_tokenizer(workdir: str, train_pairs: list[Pair], vocab_size: int, **kwargs) -> Tokenizer:
    """Loads ``workdir/tokenizer.model`` or trains it on the train split and saves it there."""
    path = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.exists(path):
        return Tokenizer.load(path)
    log.info('Training a %d-piece SentencePiece tokenizer on %d pairs', vocab_size,
             len(train_pairs))
    tokenizer = train_tokenizer((text for pair in train_pairs for text in pair), vocab_size,
                                **kwargs)
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(path)
    return tokenizer


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


    def __init__(self, pairs: Sequence[Pair], tokenizer: Tokenizer, *,
                 reverse_bos_id: int | None = None):
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
        self._reverse_bos_id = reverse_bos_id

    def __len__(self) -> int:
        return self._pairs * (1 if self._reverse_bos_id is None else 2)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Pair ``index``; with ``reverse_bos_id``, ``index`` >= the number of pairs is pair
        ``index - pairs`` the other way round, its decoder input led by ``reverse_bos_id``."""
        reverse, index = divmod(index, self._pairs)
        source, target = ((flat[at[index]:at[index + 1]].astype(np.int32)
                           for flat, at in self._sides[::-1 if reverse else 1]))
        eos = np.array([EOS_ID], np.int32)
        bos = np.array([self._reverse_bos_id if reverse else BOS_ID], np.int32)
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
                  subword_alpha: float = 0.5, bidirectional: bool = False) -> grain.IterDataset:
    """Shuffled (anew each epoch), endless, tokenized, length-filtered batches.

    With ``pack`` each of the ``batch_size`` rows holds as many whole examples as fit
    (first-fit packing), and the batch gains ``<field>_segment_ids`` (1, 2, ... per example
    in the row, 0 = padding) and ``<field>_positions`` (index within the example); the model
    never attends across examples. Without it each row is one zero-padded example.

    Its iterator's ``get_state()`` is small JSON-able state that, restored, replays exactly
    the batches that would have followed: a resumed run sees the same data. With
    ``num_shards`` > 1 it reads only every ``num_shards``-th pair from ``shard_index``.
    With ``subword_nbest`` > 1 each example's pieces are drawn from that many best
    segmentations (``SampleTokenize``), seeded by position in the stream, so resuming
    replays them too.
    With ``bidirectional`` every pair also appears reversed (target -> source, decoder input
    led by the tokenizer's ``REVERSE_BOS``): one model learns both directions from the same
    sentences, and BOS still asks for the forward one.
    """
    shard = pairs[shard_index::num_shards]
    reverse_bos_id = tokenizer.reverse_bos_id if bidirectional else None
    if bidirectional and (reverse_bos_id is None or subword_nbest > 1):
        raise ValueError('bidirectional training needs a tokenizer trained with it (a workdir '
                         f'started without data.bidirectional has no {REVERSE_BOS} piece) and '
                         'data.subword_nbest=1')
    if subword_nbest > 1:  # new pieces every epoch
        ds = grain.MapDataset.source(shard).shuffle(seed=seed).repeat()
        ds = ds.random_map(SampleTokenize(tokenizer, subword_nbest, subword_alpha), seed=seed)
    else:
        tokenized = TokenizedPairs(shard, tokenizer, reverse_bos_id=reverse_bos_id)
        ds = grain.MapDataset.source(tokenized).shuffle(seed=seed).repeat()
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
                 subword_alpha: float = 0.5, bidirectional: bool = False):
        if num_shards % process_count:
            raise ValueError(f'data.input_shards={num_shards} cannot be split over '
                             f'{process_count} processes; use a multiple of {process_count}.')
        per_process = num_shards // process_count
        self.shards = list(range(process_index * per_process, (process_index + 1) * per_process))
        self.iterators = [iter(train_dataset(pairs, tokenizer, lengths, rows_per_shard, seed,
                                             pack=pack, shard_index=i, num_shards=num_shards,
                                             subword_nbest=subword_nbest,
                                             subword_alpha=subword_alpha,
                                             bidirectional=bidirectional))
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
