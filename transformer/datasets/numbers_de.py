"""The embedded task: English number, date and time expressions rendered in German.

A parallel corpus the project generates itself (no download), deterministic from a seed,
small enough to learn on a laptop CPU in minutes, and hard in the ways translation is:

* reordering: "twenty-one" -> "einundzwanzig" (units before tens), "March 3, 2021" ->
  "3. März 2021", "nineteen eighty-four" -> "neunzehnhundertvierundachtzig";
* agreement: "one dog" -> "ein Hund" but "one cat" -> "eine Katze"; "with two dogs" ->
  "mit zwei Hunden" (dative plural); "on the third of May" -> "am dritten Mai";
* arithmetic a word-for-word model cannot do: "half past seven" -> "halb acht",
  "7:45 pm" -> "19:45 Uhr".

``generate_pairs(seed, n)`` returns n distinct (english, german) pairs; ``make_splits``
cuts one stream into disjoint train / validation / test sets; ``NumbersDe`` writes them as
a TFDS dataset.
"""

from __future__ import annotations

import dataclasses
import random

import tensorflow_datasets as tfds

from transformer.datasets.prepare import DatasetError, prepared

ONES_EN = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine',
           'ten', 'eleven', 'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen',
           'seventeen', 'eighteen', 'nineteen']
TENS_EN = ['', '', 'twenty', 'thirty', 'forty', 'fifty', 'sixty', 'seventy', 'eighty', 'ninety']
ONES_DE = ['null', 'eins', 'zwei', 'drei', 'vier', 'fünf', 'sechs', 'sieben', 'acht', 'neun',
           'zehn', 'elf', 'zwölf', 'dreizehn', 'vierzehn', 'fünfzehn', 'sechzehn', 'siebzehn',
           'achtzehn', 'neunzehn']
TENS_DE = ['', '', 'zwanzig', 'dreißig', 'vierzig', 'fünfzig', 'sechzig', 'siebzig', 'achtzig',
           'neunzig']
ORDINAL_EN = {1: 'first', 2: 'second', 3: 'third', 5: 'fifth', 8: 'eighth', 9: 'ninth',
              12: 'twelfth'}
MONTHS = [('January', 'Januar'), ('February', 'Februar'), ('March', 'März'),
          ('April', 'April'), ('May', 'Mai'), ('June', 'Juni'), ('July', 'Juli'),
          ('August', 'August'), ('September', 'September'), ('October', 'Oktober'),
          ('November', 'November'), ('December', 'Dezember')]
DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
WEEKDAYS = [('Monday', 'Montag'), ('Tuesday', 'Dienstag'), ('Wednesday', 'Mittwoch'),
            ('Thursday', 'Donnerstag'), ('Friday', 'Freitag'), ('Saturday', 'Samstag'),
            ('Sunday', 'Sonntag')]
# english singular, english plural, gender (m/f/n), german singular, plural, dative plural
NOUNS = [('dog', 'dogs', 'm', 'Hund', 'Hunde', 'Hunden'),
         ('cat', 'cats', 'f', 'Katze', 'Katzen', 'Katzen'),
         ('house', 'houses', 'n', 'Haus', 'Häuser', 'Häusern'),
         ('apple', 'apples', 'm', 'Apfel', 'Äpfel', 'Äpfeln'),
         ('book', 'books', 'n', 'Buch', 'Bücher', 'Büchern'),
         ('car', 'cars', 'n', 'Auto', 'Autos', 'Autos'),
         ('flower', 'flowers', 'f', 'Blume', 'Blumen', 'Blumen'),
         ('friend', 'friends', 'm', 'Freund', 'Freunde', 'Freunden'),
         ('child', 'children', 'n', 'Kind', 'Kinder', 'Kindern'),
         ('bottle', 'bottles', 'f', 'Flasche', 'Flaschen', 'Flaschen')]
INDEFINITE = {'nom': {'m': 'ein', 'f': 'eine', 'n': 'ein'},
              'dat': {'m': 'einem', 'f': 'einer', 'n': 'einem'}}


# -- numbers -----------------------------------------------------------------------------

def english_number(n: int) -> str:
    """0 <= n < 1,000,000 in American English words: 2345 -> 'two thousand three hundred forty-five'."""
    if n < 20:
        return ONES_EN[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS_EN[tens] + (f'-{ONES_EN[ones]}' if ones else '')
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f'{ONES_EN[hundreds]} hundred' + (f' {english_number(rest)}' if rest else '')
    thousands, rest = divmod(n, 1000)
    return f'{english_number(thousands)} thousand' + (f' {english_number(rest)}' if rest else '')


def german_number(n: int, final: bool = True) -> str:
    """0 <= n < 1,000,000 as one German word: 2345 -> 'zweitausenddreihundertfünfundvierzig'.

    ``final`` is False inside a larger compound, where 1 is 'ein' (einhundert,
    einundzwanzig) rather than the standalone 'eins' (hunderteins).
    """
    if n < 20:
        return 'ein' if n == 1 and not final else ONES_DE[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return (f'{german_number(ones, final=False)}und' if ones else '') + TENS_DE[tens]
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return german_number(hundreds, final=False) + 'hundert' + (german_number(rest) if rest else '')
    thousands, rest = divmod(n, 1000)
    return german_number(thousands, final=False) + 'tausend' + (german_number(rest) if rest else '')


def english_ordinal(n: int) -> str:
    """1..31 -> 'first' ... 'thirty-first'."""
    if n in ORDINAL_EN:
        return ORDINAL_EN[n]
    if n >= 20 and n % 10:
        return f'{TENS_EN[n // 10]}-{english_ordinal(n % 10)}'
    word = english_number(n)
    return word[:-1] + 'ieth' if word.endswith('y') else word + 'th'


def german_ordinal_stem(n: int) -> str:
    """1..31 -> the stem that takes the case ending: 'erst', 'dritt', 'siebt', 'zwanzigst'."""
    irregular = {1: 'erst', 3: 'dritt', 7: 'siebt', 8: 'acht'}
    if n in irregular:
        return irregular[n]
    return german_number(n) + ('st' if n >= 20 else 't')


def english_year(y: int) -> str:
    """1901..2099 as spoken: 1984 -> 'nineteen eighty-four', 2005 -> 'two thousand five'."""
    century, rest = divmod(y, 100)
    if century == 20 and rest < 10:
        return english_number(y)
    if rest == 0:
        return f'{english_number(century)} hundred'
    tail = f'oh {ONES_EN[rest]}' if rest < 10 else english_number(rest)
    return f'{english_number(century)} {tail}'


def german_year(y: int) -> str:
    """1901..1999 count in hundreds (neunzehnhundertvierundachtzig); 2000.. in thousands."""
    if y < 2000:
        return german_number(y // 100, final=False) + 'hundert' + (german_number(y % 100) if y % 100 else '')
    return german_number(y)


# -- templates: each draws one (english, german) pair -------------------------------------

def _cardinal(rng: random.Random) -> tuple[str, str]:
    n = rng.choice([rng.randrange(100), rng.randrange(1000), rng.randrange(10000),
                    rng.randrange(1_000_000)])
    return english_number(n), german_number(n)


def _counted_noun(rng: random.Random) -> tuple[str, str]:
    en_sg, en_pl, gender, de_sg, de_pl, de_dat_pl = rng.choice(NOUNS)
    n = rng.choice([1, 1, rng.randrange(2, 13), rng.randrange(2, 100)])
    dative = rng.random() < 0.5
    if n == 1:
        article = INDEFINITE['dat' if dative else 'nom'][gender]
        en, de = f'one {en_sg}', f'{article} {de_sg}'
    else:
        en, de = f'{english_number(n)} {en_pl}', f'{german_number(n)} {de_dat_pl if dative else de_pl}'
    return (f'with {en}', f'mit {de}') if dative else (en, de)


def _date(rng: random.Random) -> tuple[str, str]:
    month = rng.randrange(12)
    day = rng.randint(1, DAYS_IN_MONTH[month])
    en_month, de_month = MONTHS[month]
    form = rng.randrange(5)
    if form == 0:
        return f'the {english_ordinal(day)} of {en_month}', f'der {german_ordinal_stem(day)}e {de_month}'
    if form == 1:
        return f'on the {english_ordinal(day)} of {en_month}', f'am {german_ordinal_stem(day)}en {de_month}'
    if form == 2:
        year = rng.randint(1901, 2099)
        return f'{en_month} {day}, {year}', f'{day}. {de_month} {year}'
    if form == 3:
        en_day, de_day = rng.choice(WEEKDAYS)
        return f'on {en_day}, {en_month} {day}', f'am {de_day}, dem {day}. {de_month}'
    year = rng.randint(1901, 2099)
    return f'in {english_year(year)}', f'im Jahr {german_year(year)}'


def _clock_hour_de(h: int) -> str:
    """Hour 1..12 as said on a clock face (13 wraps to 1); 1 is 'eins' standalone."""
    return german_number((h - 1) % 12 + 1)


def _time(rng: random.Random) -> tuple[str, str]:
    h = rng.randint(1, 12)
    en_h = english_number(h)
    form = rng.randrange(6)
    if form == 0:
        minute, pm = rng.randrange(60), rng.random() < 0.5
        h24 = h % 12 + (12 if pm else 0)
        return f"{h}:{minute:02d} {'pm' if pm else 'am'}", f'{h24}:{minute:02d} Uhr'
    if form == 1:  # 'ein Uhr': the article form before a noun, not 'eins'
        return f"{en_h} o'clock", f"{'ein' if h == 1 else german_number(h)} Uhr"
    if form == 2:
        return f'quarter past {en_h}', f'Viertel nach {_clock_hour_de(h)}'
    if form == 3:
        return f'quarter to {en_h}', f'Viertel vor {_clock_hour_de(h)}'
    if form == 4:  # German names the half hour after the *coming* hour
        return f'half past {en_h}', f'halb {_clock_hour_de(h + 1)}'
    minute = rng.choice([5, 10, 20, 25])
    if rng.random() < 0.5:
        return f'{english_number(minute)} past {en_h}', f'{german_number(minute)} nach {_clock_hour_de(h)}'
    return f'{english_number(minute)} to {en_h}', f'{german_number(minute)} vor {_clock_hour_de(h)}'


TEMPLATES = [(_cardinal, 0.35), (_counted_noun, 0.2), (_date, 0.3), (_time, 0.15)]


def generate_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    """n distinct (english, german) pairs drawn deterministically from ``seed``."""
    rng = random.Random(seed)
    funcs, weights = zip(*TEMPLATES)
    seen: dict[str, str] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n:
            raise DatasetError(f'Could not draw {n} distinct pairs; the task has fewer. Ask for '
                               'smaller splits (config.data.builder_kwargs).')
        en, de = rng.choices(funcs, weights)[0](rng)
        seen.setdefault(en, de)
    return list(seen.items())


def make_splits(seed: int, sizes: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """Disjoint splits (no English sentence in two splits), e.g. {'train': 50000, 'test': 1000}.

    The distinct pairs are shuffled before cutting, so that every split has the same mix of
    templates (the small templates run out of new sentences early in the stream).
    """
    pairs = generate_pairs(seed, sum(sizes.values()))
    random.Random(seed + 1).shuffle(pairs)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = pairs[start:start + size]
        start += size
    return splits


@dataclasses.dataclass
class NumbersDeConfig(tfds.core.BuilderConfig):
    """Split sizes and the generator seed of the embedded numbers task."""
    seed: int = 0
    train_size: int = 60_000
    validation_size: int = 1_000
    test_size: int = 1_000


class NumbersDe(tfds.core.GeneratorBasedBuilder):
    """English number, date and time expressions -> German, as {'source', 'target'}."""

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
        splits = make_splits(cfg.seed, {
            'train': cfg.train_size, 'validation': cfg.validation_size, 'test': cfg.test_size})
        return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

    def _generate_examples(self, pairs):
        for i, (source, target) in enumerate(pairs):
            yield i, {'source': source, 'target': target}


def sources(data_dir: str | None, *, seed: int = 0, train_size: int = 60_000,
            validation_size: int = 1_000, test_size: int = 1_000, **unused):
    """Builds the numbers task on first use; returns ({split: data source}, feature names)."""
    del unused
    name = f'seed{seed}_train{train_size}_val{validation_size}_test{test_size}'
    config = NumbersDeConfig(name=name, seed=seed, train_size=train_size,
                             validation_size=validation_size, test_size=test_size)
    builder = prepared(lambda: NumbersDe(config=config, data_dir=data_dir,
                                         file_format='array_record'),
                       lambda b: b.download_and_prepare())
    return builder.as_data_source(), ('source', 'target')
