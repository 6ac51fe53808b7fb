"""Multi30k task 1 (Elliott et al., 2016): English-German image captions, as a TFDS dataset.

Splits: train (29,000 pairs), validation (1,014), test2016 (1,000). The raw files come from
the dataset's public GitHub repository, checked against their sha256, or -- offline -- from
a local folder holding the same six files (``config.data.manual_dir``).
The data is for non-commercial research and education; it is never copied into this
repository.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request

import tensorflow_datasets as tfds

from transformer.datasets.prepare import DataNotFoundError, DatasetError, prepared

log = logging.getLogger('transformer')

SOURCE_URL = ('https://raw.githubusercontent.com/multi30k/dataset/'
              'a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/')
# sha256 of the gzip files as published.
FILES = {
    'train.en.gz': 'd79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f',
    'train.de.gz': '726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6',
    'val.en.gz': '14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28',
    'val.de.gz': 'f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a',
    'test_2016_flickr.en.gz': '611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9',
    'test_2016_flickr.de.gz': '9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8',
}
SPLITS = {'train': 'train', 'validation': 'val', 'test2016': 'test_2016_flickr'}
DOWNLOAD_TIMEOUT_S = 20


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _check_local(manual_dir: str) -> list[str]:
    """Names of the six files missing from ``manual_dir``; warns on checksum mismatches."""
    missing = [name for name in FILES if not os.path.exists(os.path.join(manual_dir, name))]
    for name in set(FILES) - set(missing):
        if sha256(os.path.join(manual_dir, name)) != FILES[name]:
            log.warning('%s differs from the published file (sha256 mismatch); using it anyway.',
                        os.path.join(manual_dir, name))
    return missing


def _download(download_dir: str) -> None:
    """Downloads the files not yet in ``download_dir``; raises on a checksum mismatch."""
    os.makedirs(download_dir, exist_ok=True)
    for name, expected in FILES.items():
        path = os.path.join(download_dir, name)
        if os.path.exists(path) and sha256(path) == expected:
            continue
        log.info('Downloading %s', SOURCE_URL + name)
        with urllib.request.urlopen(SOURCE_URL + name, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with open(path + '.tmp', 'wb') as f:
                shutil.copyfileobj(response, f)
        if sha256(path + '.tmp') != expected:
            os.remove(path + '.tmp')
            raise DataNotFoundError(f'Downloaded {name} has the wrong sha256; the source changed '
                                    'or the download was corrupted. Try again, or use a local copy '
                                    '(--config.data.manual_dir=DIR).')
        os.replace(path + '.tmp', path)


def fetch(manual_dir: str | None, download_dir: str) -> str:
    """Returns a folder holding the six raw files: ``manual_dir`` or a fresh download."""
    if manual_dir:
        manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
        missing = _check_local(manual_dir)
        if not missing:
            return manual_dir
        local_problem = f'the folder {manual_dir} lacks {", ".join(missing)}'
    else:
        local_problem = 'no local folder was given'
    try:
        _download(download_dir)
        return download_dir
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
        raise DataNotFoundError(
            f'Multi30k is not available: {local_problem}, and downloading from {SOURCE_URL} '
            f'failed ({e}). Fix either way:\n'
            f'  1. connect to the internet and run again (files go to {download_dir}), or\n'
            f'  2. put {", ".join(FILES)} (from github.com/multi30k/dataset, data/task1/raw) in '
            'a folder and pass --config.data.manual_dir=FOLDER') from None


def read_lines(path: str) -> list[str | None]:
    """Stripped lines of a gzip text file; a line that is not valid UTF-8 becomes None."""
    with gzip.open(path, 'rb') as f:
        raw = f.read().split(b'\n')
    if raw and raw[-1] == b'':
        raw.pop()
    lines = []
    for number, line in enumerate(raw, 1):
        try:
            lines.append(line.decode('utf-8').strip())
        except UnicodeDecodeError as e:
            log.warning('%s line %d is not valid UTF-8 (%s); skipping that pair.', path, number, e)
            lines.append(None)
    return lines


class Multi30k(tfds.core.GeneratorBasedBuilder):
    """Multi30k task 1, English-German, as {'en': text, 'de': text}."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {'1.0.0': 'Task 1 raw text: train / val / test_2016_flickr.',
                     '1.1.0': 'Examples in the order of the raw files.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = 'Put the six data/task1/raw/*.gz files in manual_dir.'

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({'en': tfds.features.Text(),
                                                 'de': tfds.features.Text()}),
            description=__doc__, homepage='https://github.com/multi30k/dataset',
            # File order, not TFDS's key-hash order: eval.py's hypotheses then line up with
            # the raw source and reference files, for any external scorer. Training batches
            # are shuffled by the input pipeline anyway.
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        folder = str(dl_manager.manual_dir)
        return {split: self._generate_examples(folder, stem) for split, stem in SPLITS.items()}

    def _generate_examples(self, folder: str, stem: str):
        en = read_lines(os.path.join(folder, f'{stem}.en.gz'))
        de = read_lines(os.path.join(folder, f'{stem}.de.gz'))
        if len(en) != len(de):
            raise DatasetError(f'{stem}.en.gz has {len(en)} lines but {stem}.de.gz has {len(de)}; '
                             'line i of each file must be a translation pair.')
        skipped = 0
        for i, (e, d) in enumerate(zip(en, de)):
            if not e or not d:  # empty or undecodable on either side: not a translation pair
                skipped += 1
                continue
            yield i, {'en': e, 'de': d}
        if skipped:
            log.warning('%s: skipped %d of %d pairs with an empty or non-UTF-8 side.', stem,
                        skipped, len(en))


def sources(data_dir: str | None, *, manual_dir: str = '', reverse: bool = False, **unused):
    """Builds Multi30k on first use; returns ({split: data source}, (source key, target key)).

    German to English by default; ``reverse=True`` for English to German.
    """
    del unused

    def prepare(builder):
        folder = fetch(manual_dir, os.path.join(builder.data_dir_root, 'downloads', 'multi30k'))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=folder))

    builder = prepared(lambda: Multi30k(data_dir=data_dir, file_format='array_record'), prepare)
    return builder.as_data_source(), (('en', 'de') if reverse else ('de', 'en'))
