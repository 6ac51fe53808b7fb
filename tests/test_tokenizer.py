"""SentencePiece training and loading (transformer/tokenizer.py)."""

import pytest

from transformer import tokenizer as tokenizer_lib
from transformer.datasets import numbers_de


def test_tokenizer_reserves_pad_unk_bos_eos_and_round_trips(tmp_path):
    pairs = numbers_de.make_splits(0, {'train': 500})['train']
    tokenizer = tokenizer_lib.train_tokenizer((t for p in pairs for t in p), 200)
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    for _, de in pairs[:50]:
        assert tokenizer.decode(tokenizer.encode(de) + [tokenizer_lib.EOS_ID, 7, 7]) == de
    tokenizer.save(str(tmp_path / 'tok.model'))
    loaded = tokenizer_lib.Tokenizer.load(str(tmp_path / 'tok.model'))
    assert loaded.encode('zwei') == tokenizer.encode('zwei')


def test_too_small_vocabulary_names_the_size_that_works():
    texts = ['the quick brown fox jumps over the lazy dog', 'Zwölf Boxkämpfer jagen Viktor']
    with pytest.raises(tokenizer_lib.VocabularyError, match=r'vocab_size=10 is too small.*at least \d+'):
        tokenizer_lib.train_tokenizer(texts * 20, 10)


def test_lowercase_tokenizer_folds_case_on_the_way_in():
    targets = ['Ein Mann fährt Fahrrad.', 'Zwei Kinder sehen einen Mann mit einem Hund.',
               'Der Hund und der Mann spielen im Park.', 'Hund rennt.']
    texts = [t for t in targets for _ in range(20)]
    tokenizer = tokenizer_lib.train_tokenizer(texts, 60, lowercase=True)
    assert tokenizer.encode('EIN Mann') == tokenizer.encode('ein mann')
    assert tokenizer.decode(tokenizer.encode('Der HUND')) == 'der hund'
    cased = tokenizer_lib.train_tokenizer(texts, 60)
    assert cased.decode(cased.encode('Der Hund')) == 'Der Hund'
