"""TFDS builders for the project's datasets, written as array_record (no TensorFlow needed).

Every dataset yields examples ``{'source': str, 'target': str}``. ``DATASETS`` maps the
name used in ``config.data.dataset`` to a function that prepares the dataset (if it is not
on disk yet) and returns its random-access data sources, one per split.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from transformer import numbers_de


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
    return builder.as_data_source()


DATASETS = {'numbers_de': numbers_de_sources}


def load_sources(dataset: str, data_dir: str | None = None, **options):
    """Returns {split: random-access source of {'source': bytes, 'target': bytes}}."""
    if dataset not in DATASETS:
        raise ValueError(f'Unknown dataset {dataset!r}; valid: {sorted(DATASETS)}')
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    return DATASETS[dataset](data_dir, **options)
