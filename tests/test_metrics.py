"""BLEU and exact match (transformer/metrics.py)."""

import pytest

from transformer import metrics


def test_bleu_wrappers():
    refs = ['A dog runs in the park.', 'Two men are talking.']
    assert metrics.bleu(refs, refs)[0] == pytest.approx(100.0)
    assert 'case:mixed' in metrics.bleu(refs, refs)[1]
    lowered = [r.lower() for r in refs]
    assert metrics.bleu(lowered, refs)[0] < 100.0  # sacreBLEU is cased
    assert metrics.tokenized_bleu(lowered, refs, 'en') == pytest.approx(100.0)
    assert metrics.tokenized_bleu(['A dog runs in the park .'], refs[:1], 'en') == pytest.approx(100.0)
    assert metrics.tokenized_bleu(['a cat'], refs[:1], 'en') < 10.0
    assert metrics.exact_match(['x', 'y '], ['x', 'z']) == 50.0


def test_chrf_scores_characters_and_is_cased():
    refs = ['A dog runs in the park.']
    assert metrics.chrf(refs, refs) == pytest.approx(100.0)
    near, far = metrics.chrf(['A dog ran in a park.'], refs), metrics.chrf(['Two cats.'], refs)
    assert 30.0 < near < 100.0 and far < near
    assert metrics.chrf(['a dog runs in the park.'], refs) < 100.0
