"""SentencePiece tokenizers: trained on a run's training split, stored in its workdir.

Ids 0-3 are reserved: pad 0 (padding everywhere in the model), unk 1, bos 2 (the decoder's
first input), eos 3 (ends every source and target).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
from collections.abc import Iterable

import numpy as np
import sentencepiece as spm

log = logging.getLogger('transformer')

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TOKENIZER_FILE = 'tokenizer.model'

Pair = tuple[str, str]  # (source sentence, target sentence)


class VocabularyError(ValueError):
    """The requested vocabulary cannot hold the training text's characters."""


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

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids (no EOS). ``text`` must be a valid Unicode string."""
        return self.sp.encode(text.strip())

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, on every core (SentencePiece's own threads)."""
        return self.sp.encode([t.strip() for t in texts], num_threads=os.cpu_count() or 1)

    def encode_sources(self, lines: list[str], max_length: int) -> np.ndarray:
        """Source sentences -> [n, max_length] ids + EOS, 0-padded; longer ones are cut (with
        a warning) to their first ``max_length - 1`` pieces + EOS."""
        out = np.zeros((len(lines), max_length), np.int32)
        for i, line in enumerate(lines):
            ids = self.encode(line) + [EOS_ID]
            if len(ids) > max_length:
                log.warning('Line %d has %d tokens; translating only its first %d.', i + 1,
                            len(ids) - 1, max_length - 1)
                ids = ids[:max_length - 1] + [EOS_ID]
            out[i, :len(ids)] = ids
        return out

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
                    lowercase: bool = False) -> Tokenizer:
    """Trains a joint SentencePiece vocabulary on ``texts`` (source and target lines).

    ``lowercase`` case-folds text inside the model's normalizer, so encoding lowercases any
    input and decoding yields lowercase text.
    """
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t.strip() for t in texts), model_writer=proto,
            vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
            byte_fallback=byte_fallback,
            normalization_rule_name='nmt_nfkc_cf' if lowercase else 'nmt_nfkc',
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
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
