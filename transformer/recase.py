"""Restores letter case to the output of a model trained on lowercased text.

A model trained with ``config.data.lowercase`` writes lowercase text ("ein mann fährt
fahrrad ."). Scores on lowercased text (the tokenized lowercased BLEU of published Multi30k
results) do not care, but cased sacreBLEU and readers do. The recaser gives every word the
form it most often has in the training targets, away from the start of a sentence (where a
capital says nothing about the word), and capitalizes the first letter of the output. In
German, where nouns are capitalized, this restores nearly all of the case.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from collections.abc import Iterable

log = logging.getLogger(__name__)

RECASER_FILE = 'recaser.json'
_WORD = re.compile(r'\w+')


class Recaser:
    """Maps lowercase words to their usual cased form; ``recaser(text) -> cased text``."""

    def __init__(self, forms: dict[str, str]):
        self.forms = forms  # lowercase word -> its most frequent form, where that differs

    @classmethod
    def train(cls, sentences: Iterable[str]) -> Recaser:
        """Counts the forms of each word in ``sentences`` (cased text), first words excepted."""
        counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for sentence in sentences:
            for word in _WORD.findall(sentence)[1:]:
                counts[word.lower()][word] += 1
        forms = {}
        for lower, counter in counts.items():
            form = counter.most_common(1)[0][0]
            if form != lower:
                forms[lower] = form
        return cls(forms)

    def __call__(self, text: str) -> str:
        text = _WORD.sub(lambda m: self.forms.get(m.group().lower(), m.group()), text)
        for i, char in enumerate(text):
            if char.isalpha():
                return text[:i] + char.upper() + text[i + 1:]
        return text

    def save(self, path: str) -> None:
        with open(path, 'w', encoding='utf-8') as f:
            json.dump({'forms': self.forms}, f, ensure_ascii=False, indent=0, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> Recaser:
        with open(path, encoding='utf-8') as f:
            return cls(json.load(f)['forms'])


def get_recaser(workdir: str, targets: Iterable[str]) -> Recaser:
    """Loads ``workdir/recaser.json`` or learns it from ``targets`` (cased) and saves it there."""
    path = os.path.join(workdir, RECASER_FILE)
    if os.path.exists(path):
        return Recaser.load(path)
    recaser = Recaser.train(targets)
    log.info('Learned the cased forms of %d words for recasing lowercase output',
             len(recaser.forms))
    os.makedirs(workdir, exist_ok=True)
    recaser.save(path)
    return recaser


def load_if_present(workdir: str) -> Recaser | None:
    """The run's recaser, or None for a run trained on cased text."""
    path = os.path.join(workdir, RECASER_FILE)
    return Recaser.load(path) if os.path.exists(path) else None
