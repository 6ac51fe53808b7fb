"""WMT14 German-English from the TFDS catalog (``wmt14_translate/de-en``), the paper's data.

The catalog builder downloads ~1.5 GB and may need TensorFlow to prepare, so it is
prepared once, outside training (the error below says how); reading it does not.
"""

from __future__ import annotations

from transformer.datasets.prepare import DataNotFoundError


def sources(data_dir: str | None, *, reverse: bool = False, **unused):
    """({split: data source}, (source key, target key)) of the prepared dataset.

    English to German by default (the paper's direction); ``reverse=True`` for German to
    English.
    """
    del unused
    from tensorflow_datasets.translate import wmt14  # registers the catalog builder
    builder = wmt14.Wmt14Translate(config='de-en', data_dir=data_dir, file_format='array_record')
    splits = {name: name for name in ('train', 'validation', 'test')}
    try:
        sources = builder.as_data_source(split=splits)
    except (AssertionError, FileNotFoundError, ValueError) as e:
        raise DataNotFoundError(
            f'wmt14_translate/de-en is not prepared in {builder.data_dir_root} ({e}). Prepare '
            'it once, with network access (pip install tensorflow if TFDS asks for it):\n'
            '  tfds build wmt14_translate/de-en --file_format=array_record '
            f'--data_dir={builder.data_dir_root}') from None
    return sources, (('de', 'en') if reverse else ('en', 'de'))
