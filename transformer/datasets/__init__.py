"""The datasets a config can name, and reading them into (source, target) string pairs.

Each module here holds one dataset: its TFDS builder (written as array_record, read
without TensorFlow) and whatever makes its raw data (a generator or a download). Its
``sources(data_dir, **options)`` prepares the dataset on first use and returns
``({split: random-access TFDS data source}, (source feature, target feature))``.
``DATASETS`` maps the name in ``config.data.dataset`` to that module; adding a dataset is a
module and one entry there.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

from transformer.datasets.prepare import DataNotFoundError, DatasetError
from transformer.tokenizer import Pair

# name in config.data.dataset -> the module whose ``sources`` prepares and opens it (imported
# on first use, so that checking a config or translating loads no dataset code)
DATASETS: dict[str, str] = {
    'numbers_de': 'transformer.datasets.numbers_de',
    'multi30k': 'transformer.datasets.multi30k',
    'wmt14_translate': 'transformer.datasets.wmt14',
}

__all__ = ['DATASETS', 'DataNotFoundError', 'DatasetError', 'check_name', 'load_splits',
           'read_pairs']


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


def check_name(dataset: str) -> None:
    """Raises ``ValueError`` naming the valid datasets if ``dataset`` is not one of them."""
    if dataset not in DATASETS:
        raise ValueError(f'Unknown dataset {dataset!r}; valid: {sorted(DATASETS)}')


def load_splits(dataset: str, data_dir: str | None = None, splits: Sequence[str] | None = None,
                **options) -> dict[str, list[Pair]]:
    """Prepares ``dataset`` if needed and returns {split: [(source, target), ...]}.

    Only ``splits`` are read (default: all of them), so scoring a test set never loads a
    training set. ``options`` go to the dataset's ``sources`` (e.g. ``manual_dir``,
    ``reverse``); each ignores the ones it does not use. A split the dataset does not have
    raises ``ValueError`` naming the ones it has.
    """
    check_name(dataset)
    if data_dir:
        data_dir = os.path.expanduser(data_dir)
    sources, keys = importlib.import_module(DATASETS[dataset]).sources(data_dir or None, **options)
    wanted = list(sources) if splits is None else list(splits)
    missing = [name for name in wanted if name not in sources]
    if missing:
        raise DatasetError(f'{dataset} has no split {missing[0]!r}; valid: {sorted(sources)}')
    return {name: read_pairs(sources[name], keys) for name in wanted}
