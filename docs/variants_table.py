"""The architecture comparison's table in docs/experiments.md, from the comparison's sweep.

    python docs/variants_table.py runs/compare [--split test2016]

The sweep (``python sweep.py --config configs/multi30k.py:budget=MINUTES ...``) leaves one
directory per trial with config.json, run_info.json, budget.json and eval_SPLIT.json. Trials
are grouped by direction and block (a preset, or a preset with the fields that differ from
it); each group's row is the mean over its seeds, with the lowest and highest in brackets
when there are several. "val BLEU" is the validation score at the length penalty chosen on
it (eval.py --tune_length_penalty): the column to choose a block by.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import common  # noqa: E402

# (heading, how a value is printed, how it is read from a trial's files)
COLUMNS = (
    ('val BLEU', '{:.2f}',
     lambda r: max(r['eval']['length_penalty_tuning']['tokenized_lowercased_bleu'].values())),
    ('tok. lc BLEU', '{:.2f}', lambda r: r['eval']['tokenized_lowercased_bleu']),
    ('sacreBLEU', '{:.2f}', lambda r: r['eval']['sacrebleu']),
    ('chrF', '{:.2f}', lambda r: r['eval']['chrf']),
    ('params (M)', '{:.2f}', lambda r: r['info']['parameters'] / 1e6),
    ('step (s)', '{:.3f}', lambda r: r['budget']['step_seconds']),
    ('steps', '{:.0f}', lambda r: r['budget']['num_steps']),
    ('beam tok/s', '{:.0f}', lambda r: r['eval']['decode_tokens_per_sec']),
    ('KV bytes/token', '{:.0f}', lambda r: r['eval']['kv_cache_bytes_per_token']),
    ('α', '{:.1f}', lambda r: r['eval']['length_penalty']),
)


def block_name(model: dict) -> str:
    """'paper', 'modern', 'decoder_only', or the nearest preset plus the fields that differ
    from it, e.g. 'paper + positional=rope'."""
    defaults = common.base_config().model.to_dict()
    keys = sorted({k for fields in common.ARCH_PRESETS.values() for k in fields}
                  | {'num_kv_heads'})
    differences = {}
    for name in common.ARCH_PRESETS:
        preset = {**defaults, **common.arch_fields(name, model['variant'])}
        differences[name] = [f'{k}={model[k]}' for k in keys if model[k] != preset[k]]
    # Ties go to the later preset: a causal decoder-only run reads 'decoder_only +
    # prefix_lm=False', not 'modern + architecture=decoder_only'.
    name = min(reversed(differences), key=lambda n: len(differences[n]))
    return ' + '.join([name, *differences[name]])


def read_trials(sweep_dir: str, split: str) -> list[dict]:
    """Every finished trial in ``sweep_dir``: its config, run info, budget and scores."""
    trials = []
    for name in sorted(os.listdir(sweep_dir)):
        files = {key: os.path.join(sweep_dir, name, file) for key, file in (
            ('config', 'config.json'), ('info', 'run_info.json'), ('budget', 'budget.json'),
            ('eval', f'eval_{split}.json'))}
        if all(os.path.exists(path) for path in files.values()):
            trial = {}
            for key, path in files.items():
                with open(path) as f:
                    trial[key] = json.load(f)
            trials.append(trial)
    return trials


def group_rows(trials: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """[(direction, block, trials)], in the order first met."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for trial in trials:
        data = trial['config']['data']
        direction = 'en→de' if data['target_language'] == 'de' else 'de→en'
        groups.setdefault((direction, block_name(trial['config']['model'])), []).append(trial)
    return [(direction, block, members) for (direction, block), members in groups.items()]


def cell(fmt: str, values: list[float]) -> str:
    mean = fmt.format(statistics.fmean(values))
    if len(values) == 1 or min(values) == max(values):
        return mean
    return f'{mean} ({fmt.format(min(values))}–{fmt.format(max(values))})'


def table(trials: list[dict]) -> str:
    """The Markdown table: presets first, then single switches, each direction together."""
    presets = list(common.ARCH_PRESETS)
    rows = sorted(group_rows(trials), key=lambda g: (
        '+' in g[1], g[0], presets.index(g[1].split(' + ')[0]), g[1]))
    lines = ['| direction | block | seeds | ' + ' | '.join(c[0] for c in COLUMNS) + ' |',
             '|' + '---|' * (len(COLUMNS) + 3)]
    for direction, block, members in rows:
        seeds = ','.join(str(m['config']['seed']) for m in members)
        cells = [cell(fmt, [read(m) for m in members]) for _, fmt, read in COLUMNS]
        lines.append(f'| {direction} | {block} | {seeds} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('sweep_dir')
    parser.add_argument('--split', default='test2016', help='the eval_SPLIT.json to report')
    args = parser.parse_args(argv)
    trials = read_trials(args.sweep_dir, args.split)
    if not trials:
        raise SystemExit(f'Error: no trial in {args.sweep_dir} has config.json, run_info.json, '
                         f'budget.json and eval_{args.split}.json; run the sweep (and its '
                         'eval.py --split) first.')
    print(table(trials))


if __name__ == '__main__':
    main()
