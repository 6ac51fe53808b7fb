"""Minimum-Bayes-risk selection: BLEU+1 equals sacreBLEU's add-one smoothed sentence BLEU,
and the candidate with the most agreement wins."""

import pytest
import sacrebleu

from transformer import mbr


@pytest.mark.parametrize('hyp,ref', [
    ('a man rides a red bike', 'a man rides a red bike'),
    ('a man rides a bike', 'a man is riding a red bike down the street'),
    ('the dog runs in the grass near a tree', 'a dog runs'),
    ('two women', 'two women sit on a bench'),
    ('blue', 'a man rides a red bike'),
    ('red', 'red'),
    ('the the the the', 'the cat'),
])
def test_sentence_bleu_equals_sacrebleu_add_one(hyp, ref):
    expected = sacrebleu.BLEU(tokenize='none', smooth_method='add-k', force=True)
    expected = expected.sentence_score(hyp, [ref]).score / 100
    assert mbr.sentence_bleu(hyp.split(), ref.split()) == pytest.approx(expected, abs=1e-9)


def test_sentence_bleu_of_nothing_in_common_or_empty_is_zero():
    assert mbr.sentence_bleu('a b c'.split(), 'x y z'.split()) == 0.0
    assert mbr.sentence_bleu([], 'x y z'.split()) == 0.0


def test_select_prefers_the_consensus_over_the_first_candidate():
    samples = [s.split() for s in ('a dog runs on the beach', 'a dog runs on the sand',
                                   'a dog runs on the beach', 'one dog is running')]
    beam = 'a cat sleeps on the beach'.split()
    assert mbr.select([beam] + samples, samples) == 1


def test_select_breaks_ties_towards_the_earliest_candidate():
    samples = [['x', 'y'], ['x', 'y']]
    assert mbr.select([['x', 'y'], ['x', 'y']], samples) == 0


def test_select_weights_repeated_samples():
    # 'b' alone is drawn 3 times, 'a' once: b wins although a is listed first.
    a, b = 'p q r a'.split(), 'p q r b'.split()
    assert mbr.select([a, b], [a, b, b, b]) == 1
    assert mbr.select([a, b], [a, a, a, b]) == 0


def test_select_needs_candidates_and_samples():
    with pytest.raises(ValueError, match='at least one'):
        mbr.select([], [['a']])
    with pytest.raises(ValueError, match='at least one'):
        mbr.select([['a']], [])
