"""The embedded task, the TFDS builder, the tokenizer and the grain pipeline."""

import numpy as np
import pytest

from configs import default as default_config
from transformer import config_lib, data, numbers_de, tasks


@pytest.mark.parametrize('n,en,de', [
    (21, 'twenty-one', 'einundzwanzig'),
    (101, 'one hundred one', 'einhunderteins'),
    (1984, 'one thousand nine hundred eighty-four', 'eintausendneunhundertvierundachtzig'),
    (300017, 'three hundred thousand seventeen', 'dreihunderttausendsiebzehn'),
])
def test_numbers_in_both_languages(n, en, de):
    assert numbers_de.english_number(n) == en
    assert numbers_de.german_number(n) == de


def test_years_ordinals_and_half_hours():
    assert numbers_de.english_year(1984) == 'nineteen eighty-four'
    assert numbers_de.german_year(1984) == 'neunzehnhundertvierundachtzig'
    assert numbers_de.english_year(1905) == 'nineteen oh five'
    assert numbers_de.english_ordinal(22) == 'twenty-second'
    assert numbers_de.german_ordinal_stem(3) + 'en' == 'dritten'
    assert numbers_de._clock_hour_de(12 + 1) == 'eins'  # half past twelve -> halb eins


def test_generator_is_deterministic_and_splits_are_disjoint():
    sizes = {'train': 3000, 'validation': 200, 'test': 200}
    a, b = numbers_de.make_splits(7, sizes), numbers_de.make_splits(7, sizes)
    assert a == b
    assert {k: len(v) for k, v in a.items()} == sizes
    seen = [set(en for en, _ in a[name]) for name in sizes]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert numbers_de.make_splits(8, sizes) != a


def test_tfds_builder_writes_array_record_and_reads_back(tmp_path):
    splits = tasks.load_splits('numbers_de', str(tmp_path), train_size=50,
                               validation_size=5, test_size=5)
    assert {k: len(v) for k, v in splits.items()} == {'train': 50, 'validation': 5, 'test': 5}
    assert list(tmp_path.rglob('*.array_record*'))
    expected = numbers_de.make_splits(0, {'train': 50, 'validation': 5, 'test': 5})['test']
    assert sorted(splits['test']) == sorted(expected)


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown dataset 'nope'.*numbers_de"):
        tasks.load_splits('nope')


@pytest.fixture(scope='module')
def pairs_and_tokenizer():
    pairs = numbers_de.make_splits(0, {'train': 2000})['train']
    tokenizer = data.train_tokenizer((t for p in pairs for t in p), 200)
    return pairs, tokenizer


def test_tokenizer_reserves_pad_unk_bos_eos_and_round_trips(pairs_and_tokenizer, tmp_path):
    pairs, tokenizer = pairs_and_tokenizer
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)
    for _, de in pairs[:50]:
        assert tokenizer.decode(tokenizer.encode(de) + [data.EOS_ID, 7, 7]) == de
    tokenizer.save(str(tmp_path / 'tok.model'))
    assert data.Tokenizer.load(str(tmp_path / 'tok.model')).encode('zwei') == tokenizer.encode('zwei')


def test_tokenized_once_equals_tokenizing_each_example(pairs_and_tokenizer, monkeypatch):
    pairs, tokenizer = pairs_and_tokenizer
    pairs = pairs[:300] + [('  padded  ', ''), ('', 'x')]  # strip; empty sides
    monkeypatch.setattr(data.TokenizedPairs, 'CHUNK', 64)  # several chunks, a partial last one
    tokenized = data.TokenizedPairs(pairs, tokenizer)
    assert len(tokenized) == len(pairs) and tokenized._sides[0][0].dtype == np.uint16
    tokenize = data.Tokenize(tokenizer)
    for i, pair in enumerate(pairs):
        expected, got = tokenize.map(pair), tokenized[i]
        assert expected.keys() == got.keys()
        for key in expected:
            assert got[key].dtype == np.int32 and np.array_equal(got[key], expected[key]), (i, key)


def test_bidirectional_data_adds_every_pair_reversed_with_its_own_decoder_start():
    pairs = numbers_de.make_splits(0, {'train': 300})['train']
    tokenizer = data.train_tokenizer((t for p in pairs for t in p), 200, bidirectional=True)
    reverse_bos = tokenizer.reverse_bos_id
    assert reverse_bos not in (None, data.BOS_ID)
    assert tokenizer.sp.id_to_piece(reverse_bos) == data.REVERSE_BOS
    both = data.TokenizedPairs(pairs, tokenizer, reverse_bos_id=reverse_bos)
    one_way = data.TokenizedPairs(pairs, tokenizer)
    assert len(both) == 2 * len(one_way) == 600
    for i in (0, 7, 299):
        forward, backward = both[i], both[300 + i]
        assert all(np.array_equal(forward[k], one_way[i][k]) for k in forward)
        assert np.array_equal(backward['inputs'], forward['targets'])          # ... EOS
        assert np.array_equal(backward['targets'][:-1], forward['inputs'][:-1])
        assert backward['decoder_inputs'][0] == reverse_bos
        assert np.array_equal(backward['decoder_inputs'][1:], forward['inputs'][:-1])
    batch = next(iter(data.train_dataset(pairs, tokenizer, data.Lengths(36, 24), 8, seed=0,
                                         bidirectional=True)))
    first = (batch['decoder_inputs_positions'] == 0) & (batch['decoder_inputs_segment_ids'] > 0)
    starts = batch['decoder_inputs'][first]
    assert {data.BOS_ID, reverse_bos} == set(starts.tolist())  # both directions are mixed in
    config = default_config.get_config()
    config.data.update(bidirectional=True, subword_nbest=4)
    with pytest.raises(config_lib.ConfigError, match='config.data.bidirectional=True'):
        config_lib.validate(config)
    plain = data.train_tokenizer((t for p in pairs for t in p), 200)
    assert plain.reverse_bos_id is None
    with pytest.raises(ValueError, match='needs a tokenizer trained with it'):
        data.train_dataset(pairs, plain, data.Lengths(36, 24), 8, seed=0, bidirectional=True)


def test_packed_batches_keep_examples_whole_and_padding_low(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    lengths = data.Lengths(36, 24)
    batch = next(iter(data.train_dataset(pairs, tokenizer, lengths, 8, seed=0)))
    assert batch['inputs'].shape == (8, 36) and batch['targets'].shape == (8, 24)
    for row in range(8):
        seg = batch['targets_segment_ids'][row]
        for s in set(seg) - {0}:
            tgt = batch['targets'][row][seg == s]
            dec = batch['decoder_inputs'][row][batch['decoder_inputs_segment_ids'][row] == s]
            assert tgt[-1] == data.EOS_ID and dec[0] == data.BOS_ID
            np.testing.assert_array_equal(dec[1:], tgt[:-1])  # shifted right within the example
            np.testing.assert_array_equal(batch['targets_positions'][row][seg == s], np.arange(len(tgt)))
    assert np.mean(batch['targets'] != 0) > 0.75


def test_iterator_state_replays_the_same_batches(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    lengths = data.Lengths(36, 24)
    it = iter(data.train_dataset(pairs, tokenizer, lengths, 4, seed=3))
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(data.train_dataset(pairs, tokenizer, lengths, 4, seed=3))
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
    lengths, kw = data.Lengths(36, 24), dict(subword_nbest=8, subword_alpha=0.0)
    plain = next(iter(data.train_dataset(pairs, tokenizer, lengths, 4, seed=3)))
    it = iter(data.train_dataset(pairs, tokenizer, lengths, 4, seed=3, **kw))
    assert not np.array_equal(next(it)['targets'], plain['targets'])
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(data.train_dataset(pairs, tokenizer, lengths, 4, seed=3, **kw))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_eval_batches_cover_every_pair_once_in_order(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    batches = list(data.eval_batches(pairs[:23], tokenizer, data.Lengths(36, 24), 10))
    assert len(batches) == 3 and all(b['inputs'].shape == (10, 36) for b in batches)
    rows = np.concatenate([b['inputs'] for b in batches])
    assert np.all(rows[23:] == 0)
    first = tokenizer.encode(pairs[0][0]) + [data.EOS_ID]
    np.testing.assert_array_equal(rows[0, :len(first)], first)


def test_too_small_vocabulary_names_the_size_that_works():
    texts = ['the quick brown fox jumps over the lazy dog', 'Zwölf Boxkämpfer jagen Viktor']
    with pytest.raises(data.VocabularyError, match=r'vocab_size=10 is too small.*at least \d+'):
        data.train_tokenizer(texts * 20, 10)


def test_process_shards_make_the_same_global_batch_as_one_process(pairs_and_tokenizer):
    pairs, tokenizer = pairs_and_tokenizer
    kw = dict(pack=True, num_shards=2)
    lengths = data.Lengths(36, 24)
    whole = data.ShardedBatches(pairs, tokenizer, lengths, 4, 0, **kw)
    halves = [data.ShardedBatches(pairs, tokenizer, lengths, 4, 0, process_index=p,
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
    second = data.ShardedBatches(pairs, tokenizer, lengths, 4, 0, process_index=1,
                                 process_count=2, **kw)
    second.set_state(state)
    np.testing.assert_array_equal(next(second)['inputs'], expected['inputs'][4:])
    with pytest.raises(ValueError, match='another data.input_shards'):
        data.ShardedBatches(pairs, tokenizer, lengths, 4, 0, pack=True, num_shards=4).set_state(state)
