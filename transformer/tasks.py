"""TFDS builders for the project's datasets, written as array_record (no TensorFlow needed).

``DATASETS`` maps the name used in ``config.data.dataset`` to a function that prepares the
dataset on first use and returns ``{split: random-access TFDS data source}`` plus the
feature names of the source and target side. ``load_splits`` turns that into in-memory
lists of (source, target) strings.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from transformer import multi30k, numbers_de

Pair = tuple[str, str]  # (source sentence, target sentence)


@dataclasses.dataclass
class NumbersDeConfig(tfds.core.BuilderConfig):
    """Split sizes and the generator seed of the embedded numbers task."""
    seed: int = 0
    train_size: int = 60_000
    validation_size: int = 1_000
    test_size: int = 1_000


class NumbersDe(tfds.core.GeneratorBasedBuilder):
    """English number, date and time expressions -> German (see ``numbers_de``)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Numbers, counted nouns, dates and clock times.'}
    BUILDER_CONFIGS = [NumbersDeConfig(name='default', description='60k/1k/1k pairs, seed 0.')]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({'source': tfds.features.Text(),
                                                 'target': tfds.features.Text()}),
            supervised_keys=('source', 'target'),
            description=__doc__)

    def _split_generators(self, dl_manager):
        del dl_manager  # generated locally, nothing to download
        cfg = self.builder_config
        splits = numbers_de.make_splits(cfg.seed, {
            'train': cfg.train_size, 'validation': cfg.validation_size, 'test': cfg.test_size})
        return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

    def _generate_examples(self, pairs):
        for i, (source, target) in enumerate(pairs):
            yield i, {'source': source, 'target': target}


def numbers_de_sources(data_dir: str | None, *, seed: int = 0, train_size: int = 60_000,
                       validation_size: int = 1_000, test_size: int = 1_000, **unused):
    """Builds the numbers task on first use and returns {split: data source}."""
    del unused
    name = f'seed{seed}_train{train_size}_val{validation_size}_test{test_size}'
    config = NumbersDeConfig(name=name, seed=seed, train_size=train_size,
                             validation_size=validation_size, test_size=test_size)
    builder = NumbersDe(config=config, data_dir=data_dir, file_format='array_record')
    builder.download_and_prepare()
    return builder.as_data_source(), ('source', 'target')


def wmt14_sources(data_dir: str | None, *, reverse: bool = False, **unused):
    """WMT14 German-English from the TFDS catalog (``wmt14_translate/de-en``).

    English to German by default (the paper's direction); ``reverse=True`` for German to
    English. The catalog builder downloads ~1.5 GB and may need TensorFlow to prepare, so
    it is prepared once, outside training (see the message below); reading it does not.
    """
    del unused
    from tensorflow_datasets.translate import wmt14  # registers the catalog builder
    builder = wmt14.Wmt14Translate(config='de-en', data_dir=data_dir, file_format='array_record')
    splits = {name: name for name in ('train', 'validation', 'test')}
    try:
        sources = builder.as_data_source(split=splits)
    except (AssertionError, FileNotFoundError, ValueError) as e:
        raise multi30k.DataNotFoundError(
            f'wmt14_translate/de-en is not prepared in {builder.data_dir_root} ({e}). Prepare '
            'it once, with network access (pip install tensorflow if TFDS asks for it):\n'
            '  tfds build wmt14_translate/de-en --file_format=array_record '
            f'--data_dir={builder.data_dir_root}') from None
    return sources, (('de', 'en') if reverse else ('en', 'de'))


DATASETS = {'numbers_de': numbers_de_sources, 'multi30k': multi30k.sources,
            'wmt14_translate': wmt14_sources}


def _text(value) -> str:
    return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_pairs(source, keys: tuple[str, str] = ('source', 'target'),
               chunk_size: int = 4096) -> list[Pair]:
    """Reads every record of a TFDS data source into memory as (source, target) strings.

    Batched reads (``__getitems__``) are ~5x faster than one record at a time, and the
    training pipeline then shuffles and tokenizes strings in memory. Memory is about twice
    the text size (WMT14 en-de, 4.5M pairs: ~1.5 GB; each host of a pod reads its shard).
    """
    pairs = []
    for start in range(0, len(source), chunk_size):
        indices = list(range(start, min(start + chunk_size, len(source))))
        try:
            records = source.__getitems__(indices)
        except (AttributeError, TypeError):  # a source without batched reads (e.g. a mock)
            records = [source[i] for i in indices]
        pairs += [(_text(r[keys[0]]).strip(), _text(r[keys[1]]).strip()) for r in records]
    return pairs


def load_splits(dataset: str, data_dir: str | None = None, **options) -> dict[str, list[Pair]]:
    """Prepares ``dataset`` if needed and returns {split: [(source, target), ...]}.

    ``options`` go to the dataset's function (e.g. ``manual_dir``, ``reverse``); each
    ignores the ones it does not use.
    """
    if dataset not in DATASETS:
        raise ValueError(f'Unknown dataset {dataset!r}; valid: {sorted(DATASETS)}')
    if data_dir:
        data_dir = os.path.expanduser(data_dir)
    sources, keys = DATASETS[dataset](data_dir or None, **options)
    return {name: read_pairs(source, keys) for name, source in sources.items()}
