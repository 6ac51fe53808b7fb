"""The datasets (transformer/datasets/): the numbers generator, Multi30k offline, WMT14 on
mock data, bad raw lines."""

import gzip
import logging
import urllib.error

import pytest
import tensorflow_datasets as tfds

from conftest import DE, EN, write_multi30k_raw
from transformer import datasets
from transformer.datasets import multi30k, numbers_de
from transformer.datasets.multi30k import SPLITS


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
    splits = datasets.load_splits('numbers_de', str(tmp_path), train_size=50,
                               validation_size=5, test_size=5)
    assert {k: len(v) for k, v in splits.items()} == {'train': 50, 'validation': 5, 'test': 5}
    assert list(tmp_path.rglob('*.array_record*'))
    expected = numbers_de.make_splits(0, {'train': 50, 'validation': 5, 'test': 5})['test']
    assert sorted(splits['test']) == sorted(expected)


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown dataset 'nope'.*numbers_de"):
        datasets.load_splits('nope')


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails at once, as it would offline."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')
    monkeypatch.setattr(multi30k.urllib.request, 'urlopen', refuse)


def test_multi30k_builds_offline_from_a_local_folder(tmp_path, caplog):
    raw = write_multi30k_raw(tmp_path / 'raw')
    with caplog.at_level(logging.WARNING, logger='transformer'):
        splits = datasets.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(raw))
    assert 'sha256 mismatch' in caplog.text  # our files are not the published ones
    assert set(splits) == {'train', 'validation', 'test2016'}
    assert list(splits['test2016']) == list(zip(DE, EN))  # German -> English by default
    reverse = datasets.load_splits('multi30k', str(tmp_path / 'tfds'), reverse=True)
    assert list(reverse['train']) == list(zip(EN, DE))  # prepared once, reused offline


def test_multi30k_keeps_the_order_of_the_raw_files(tmp_path):
    # eval.py writes hypotheses in split order; they must line up with the raw files.
    en = [f'Sentence number {i}.' for i in range(40)]
    de = [f'Satz Nummer {i}.' for i in range(40)]
    splits = datasets.load_splits('multi30k', str(tmp_path / 'tfds'),
                               manual_dir=str(write_multi30k_raw(tmp_path / 'raw', en, de)))
    assert [pair[1] for pair in splits['test2016']] == en


def test_multi30k_without_data_or_network_says_both_fixes(tmp_path):
    with pytest.raises(multi30k.DataNotFoundError) as error:
        datasets.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'nope'))
    message = str(error.value)
    assert 'connect to the internet' in message and '--config.data.manual_dir' in message
    assert 'train.en.gz' in message


def test_multi30k_refuses_files_of_different_lengths(tmp_path):
    raw = write_multi30k_raw(tmp_path / 'raw', de=DE[:2])
    with pytest.raises(ValueError, match='3 lines but .* has 2'):
        datasets.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(raw))


def test_wmt14_reads_the_catalog_builder_english_to_german():
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = datasets.load_splits('wmt14_translate')
    assert {k: len(v) for k, v in splits.items()} == {'train': 6, 'validation': 6, 'test': 6}
    assert all(isinstance(src, str) and isinstance(tgt, str) for src, tgt in splits['train'])


def test_bad_lines_in_raw_data_are_reported_and_skipped(tmp_path, caplog, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError('network disabled in tests')
    monkeypatch.setattr(multi30k.urllib.request, 'urlopen', refuse)
    raw = tmp_path / 'raw'
    raw.mkdir()
    en = [b'A dog.', b'', b'Two cats.', b'A bad \xff line.', b'A house.']
    de = [b'Ein Hund.', b'Leer.', b'Zwei Katzen.', b'Eine Zeile.', b'Ein Haus.']
    for stem in SPLITS.values():
        for lang, lines in (('en', en), ('de', de)):
            with gzip.open(raw / f'{stem}.{lang}.gz', 'wb') as f:
                f.write(b'\n'.join(lines) + b'\n')
    with caplog.at_level(logging.WARNING, logger='transformer'):
        splits = datasets.load_splits('multi30k', str(tmp_path / 'tfds'), manual_dir=str(raw))
    assert sorted(splits['train']) == [('Ein Haus.', 'A house.'), ('Ein Hund.', 'A dog.'),
                                       ('Zwei Katzen.', 'Two cats.')]
    assert 'train.en.gz line 4 is not valid UTF-8' in caplog.text
    assert 'skipped 2 of 5 pairs' in caplog.text
