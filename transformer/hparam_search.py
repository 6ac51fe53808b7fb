"""Hyperparameter sweeps: the trials a config declares, and reading back what each trial got.

A config declares its sweep with ``get_sweep()``, returning a list of trials, each a dict
of config overrides such as ``{'train.learning_rate': 1e-3}``. Build the list with
``grid`` (every combination) or ``random_search`` (seeded samples from ranges). The
command-line runner is ``sweep.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re

import numpy as np

from transformer import writers

Trial = dict[str, object]   # config path -> value

# metric name -> whether larger is better (validation_*: metrics.jsonl; the others:
# eval_validation.json, see trial_metrics)
METRICS = {
    'validation_loss': False,
    'validation_accuracy': True,
    'validation_perplexity': False,
    'bleu': True,
    'exact_match': True,
}


def grid(**values: list) -> list[Trial]:
    """Every combination: grid(**{'train.learning_rate': [1e-3, 2e-3], ...})."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


@dataclasses.dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """Uniform in log space: for learning rates and other scales."""
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclasses.dataclass(frozen=True)
class Choice:
    options: tuple

    def sample(self, rng: np.random.Generator):
        return self.options[int(rng.integers(len(self.options)))]


def random_search(num_trials: int, seed: int, **space) -> list[Trial]:
    """``num_trials`` samples of ``space`` (Uniform, LogUniform or Choice per key), seeded.

    Floats are rounded to 3 significant digits so that trial names stay readable.
    """
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(num_trials):
        trial = {}
        for key, dist in space.items():
            value = dist.sample(rng)
            trial[key] = float(f'{value:.3g}') if isinstance(value, float) else value
        trials.append(trial)
    return trials


def search_space(trials: list[Trial]) -> dict[str, Choice]:
    """The values each key takes across ``trials``, as choices (for Optuna's samplers)."""
    keys = dict.fromkeys(k for trial in trials for k in trial)
    return {k: Choice(tuple(dict.fromkeys(t[k] for t in trials if k in t))) for k in keys}


def format_value(value) -> str:
    return f'{value:g}' if isinstance(value, float) else str(value)


def trial_name(trial: Trial) -> str:
    """A directory name made of the overrides, e.g. 'learning_rate=0.002,warmup_steps=200'."""
    parts = [f'{key.split(".")[-1]}={format_value(value)}' for key, value in trial.items()]
    return re.sub(r'[^A-Za-z0-9._=,+-]', '_', ','.join(parts)) or 'defaults'


def flags(trial: Trial) -> list[str]:
    """The ``--config.<key>=<value>`` flags of one trial."""
    return [f'--config.{key}={format_value(value)}' for key, value in trial.items()]


def _validation_records(trial_dir: str) -> list[dict]:
    return [r for r in writers.read_metrics(trial_dir) if r.get('split') == 'validation']


def trial_metrics(trial_dir: str) -> dict[str, float]:
    """What a finished trial got: its last validation record and its validation scores."""
    out: dict[str, float] = {}
    records = _validation_records(trial_dir)
    if records:
        last = records[-1]
        out.update(step=last['step'], validation_loss=last['loss'],
                   validation_accuracy=last['accuracy'], validation_perplexity=last['perplexity'])
    path = os.path.join(trial_dir, 'eval_validation.json')
    if os.path.exists(path):
        with open(path) as f:
            scores = json.load(f)
        out.update(bleu=scores['sacrebleu'], exact_match=scores['exact_match'])
    return out


def validation_curve(trial_dir: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of a validation metric so far, read while the trial trains."""
    if not metric.startswith('validation_'):
        return []
    field = metric[len('validation_'):]
    return [(r['step'], r[field]) for r in _validation_records(trial_dir)]
