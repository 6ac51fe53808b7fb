"""Tokenized, packed, sharded and resumable batches (transformer/input_pipeline.py)."""

import numpy as np
import pytest

from transformer import input_pipeline
from transformer import tokenizer as tokenizer_lib
from transformer.datasets import numbers_de


@pytest.fixture(scope='module')
def pairs_and_tokenizer():
    pairs = numbers_de.make_splits(0, {'train': 2000})['train']
    tokenizer = tokenizer_lib.train_tokenizer((t for p in pairs for t in p), 200)
    return pairs, tokenizer


def test_tokenized_once_equals_tokenizing_each_example(pairs_and_tokenizer, monkeypatch):
    pairs, tokenizer = pairs_and_tokenizer
    pairs = pairs[:300] + [('  padded  ', ''), ('', 'x')]  # strip; empty sides
    monkeypatch.setattr(input_pipeline.TokenizedPairs, 'CHUNK', 64)  # several chunks, a partial last one
    tokenized = input_pipeline.TokenizedPairs(pairs, tokenizer)
    assert len(tokenized) == len(pairs) and tokenized._sides[0][0].dtype == np.uint16
    tokenize = input_pipeline.Tokenize(tokenizer)
    for i, pair in enumerate(pairs):
        expected, got = tokenize.map(pair), tokenized[i]
        assert expected.keys() == got.keys()
        for key in expected:
            assert got[key].dtype == np.int32 and np.array_equal(got[key], expected[key]), (i, key)


def test_packed_batches_keep_examples_whole_and_padding_low(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    lengths = input_pipeline.Lengths(36, 24)
    batch = next(iter(input_pipeline.train_dataset(pairs, tokenizer, lengths, 8, seed=0)))
    assert batch['inputs'].shape == (8, 36) and batch['targets'].shape == (8, 24)
    for row in range(8):
        seg = batch['targets_segment_ids'][row]
        for s in set(seg) - {0}:
            tgt = batch['targets'][row][seg == s]
            dec = batch['decoder_inputs'][row][batch['decoder_inputs_segment_ids'][row] == s]
            assert tgt[-1] == tokenizer_lib.EOS_ID and dec[0] == tokenizer_lib.BOS_ID
            np.testing.assert_array_equal(dec[1:], tgt[:-1])  # shifted right within the example
            np.testing.assert_array_equal(batch['targets_positions'][row][seg == s], np.arange(len(tgt)))
    assert np.mean(batch['targets'] != 0) > 0.75


def test_iterator_state_replays_the_same_batches(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    lengths = input_pipeline.Lengths(36, 24)

    def batches():
        return iter(input_pipeline.train_dataset(pairs, tokenizer, lengths, 4, seed=3))
    it = batches()
    for _ in range(5):
        next(it)
    assert_restored_state_replays(it, batches)


def assert_restored_state_replays(it, make_iterator):
    """The next batches of ``it`` equal those of a new iterator given ``it``'s state."""
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = make_iterator()
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_subword_sampling_draws_valid_segmentations_reproducibly(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    text = max((de for _, de in pairs), key=len)  # a long German compound: many segmentations
    best = tokenizer.encode(text)
    draws = [tokenizer.sample_encode(text, 8, 0.0, np.random.default_rng(i)) for i in range(40)]
    assert len({tuple(d) for d in draws}) > 2
    assert all(tokenizer.decode(d) == text for d in draws)  # every draw spells the same text
    assert draws[3] == tokenizer.sample_encode(text, 8, 0.0, np.random.default_rng(3))
    assert tokenizer.sample_encode(text, 1, 0.0, np.random.default_rng(0)) == best
    sharp = [tokenizer.sample_encode(text, 8, 1e3, np.random.default_rng(i)) for i in range(10)]
    assert all(d == best for d in sharp)  # a large alpha keeps the most likely segmentation


def test_sampled_segmentations_differ_from_the_best_and_replay_on_resume(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    lengths, kw = input_pipeline.Lengths(36, 24), dict(subword_nbest=8, subword_alpha=0.0)
    plain = next(iter(input_pipeline.train_dataset(pairs, tokenizer, lengths, 4, seed=3)))

    def batches():
        return iter(input_pipeline.train_dataset(pairs, tokenizer, lengths, 4, seed=3, **kw))
    it = batches()
    assert not np.array_equal(next(it)['targets'], plain['targets'])
    assert_restored_state_replays(it, batches)


def test_eval_batches_cover_every_pair_once_in_order(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    lengths = input_pipeline.Lengths(36, 24)
    batches = list(input_pipeline.eval_batches(pairs[:23], tokenizer, lengths, 10))
    assert len(batches) == 3 and all(b['inputs'].shape == (10, 36) for b in batches)
    rows = np.concatenate([b['inputs'] for b in batches])
    assert np.all(rows[23:] == 0)
    first = tokenizer.encode(pairs[0][0]) + [tokenizer_lib.EOS_ID]
    np.testing.assert_array_equal(rows[0, :len(first)], first)


def test_process_shards_make_the_same_global_batch_as_one_process(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    kw = dict(pack=True, num_shards=2)
    lengths = input_pipeline.Lengths(36, 24)
    whole = input_pipeline.ShardedBatches(pairs, tokenizer, lengths, 4, 0, **kw)
    halves = [input_pipeline.ShardedBatches(pairs, tokenizer, lengths, 4, 0, process_index=p,
                                  process_count=2, **kw) for p in range(2)]
    for _ in range(3):
        want = next(whole)
        got = [next(h) for h in halves]
        assert want['inputs'].shape == (8, 36)
        for key in want:  # process 0's rows, then process 1's
            np.testing.assert_array_equal(want[key], np.concatenate([g[key] for g in got]))
    # Per-shard state: what one process saved, two processes resume from (and vice versa).
    state = whole.get_state()
    assert sorted(state['shards']) == ['0', '1']
    expected = next(whole)
    second = input_pipeline.ShardedBatches(pairs, tokenizer, lengths, 4, 0, process_index=1,
                                 process_count=2, **kw)
    second.set_state(state)
    np.testing.assert_array_equal(next(second)['inputs'], expected['inputs'][4:])
    with pytest.raises(ValueError, match='another data.input_shards'):
        input_pipeline.ShardedBatches(pairs, tokenizer, lengths, 4, 0, pack=True,
                                      num_shards=4).set_state(state)
