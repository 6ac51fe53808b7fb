"""Run the hyperparameter sweep a config declares, locally or as commands for a cluster.

    python sweep.py --config configs/default.py --workdir runs/sweep_default
    python sweep.py --config configs/default.py --workdir runs/sweep_default --parallel 2
    python sweep.py --config configs/default.py --workdir runs/sweep_default --dry_run
    python sweep.py --config configs/default.py --workdir runs/study --mode optuna --n_trials 20

Each trial is its own train.py process (then eval.py on the validation split) with its own
workdir under --workdir, named after its overrides. Running the same command again skips
finished trials and resumes interrupted ones from their checkpoints. A trial that fails
(a bad value, a NaN loss) is recorded with its error and the sweep goes on. At the end:
results.csv, results.md (sorted by --metric) and sweep.png (the metric against each swept
hyperparameter).

--mode optuna (optional: pip install optuna) searches the config's space with Optuna
instead, pruning trials whose validation curve falls behind; --study_storage (default
sqlite:///WORKDIR/study.db) may be a database URL shared by several machines.
"""

from __future__ import annotations

import concurrent.futures
import csv
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from absl import app, flags

from transformer import hparam_search

FLAGS = flags.FLAGS
flags.DEFINE_string('config', None, 'Config file that defines get_sweep(), e.g. configs/default.py.')
flags.DEFINE_string('workdir', None, 'Directory for the trials, results.csv and results.md.')
flags.DEFINE_integer('parallel', 1, 'Trials run at the same time.')
flags.DEFINE_bool('dry_run', False, 'Print one command line per trial and exit.')
flags.DEFINE_enum('metric', 'validation_loss', list(hparam_search.METRICS), 'What the table is sorted by.')
flags.DEFINE_bool('eval', True, 'Run eval.py on the validation split after each trial (BLEU).')
flags.DEFINE_enum('mode', 'list', ['list', 'optuna'], "'list': the trials get_sweep() returns; "
                  "'optuna': an Optuna study over the same values (or get_search_space()).")
flags.DEFINE_integer('n_trials', 10, 'Trials to run in --mode optuna (this process).')
flags.DEFINE_string('study_storage', '', 'Optuna storage URL; default sqlite:///WORKDIR/study.db.')
flags.DEFINE_list('extra', [], 'Overrides for every trial, e.g. --extra=train.num_steps=500.')
flags.DEFINE_string('eval_flags', '--split=validation', "eval.py's flags after each trial, e.g. "
                    "'--split=test2016 --tune_length_penalty=0.6,1' (chosen on validation).")
flags.DEFINE_integer('cores_per_trial', 0, 'Pin each running trial to its own this many CPU '
                     'cores (with --parallel: side by side, not competing); 0 = no pinning.')
flags.mark_flags_as_required(['config', 'workdir'])

ROOT = os.path.dirname(os.path.abspath(__file__))
STATUS_FILE = 'trial.json'
SLOTS = None  # CoreSlots, set by main


def load_sweep(config_arg: str):
    """(trials, search space or None) that ``path[:arg]`` declares."""
    path, _, arg = config_arg.partition(':')
    if not os.path.exists(path):
        raise SystemExit(f'Error: no config file {path}')
    spec = importlib.util.spec_from_file_location('sweep_config', path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, ROOT)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_sweep'):
        raise SystemExit(f'Error: {path} declares no get_sweep(); add one returning a list of '
                         'override dicts (see transformer/hparam_search.py: grid, random_search).')
    trials = module.get_sweep(arg or None)
    space = module.get_search_space(arg or None) if hasattr(module, 'get_search_space') else None
    return trials, space


def parse_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'Error: --extra {item!r} is not key=value')
        extra[key] = value
    return extra


def commands(trial: dict, trial_dir: str, portable: bool = False) -> list[list[str]]:
    """train.py (and eval.py) command lines of one trial.

    ``portable``: 'python train.py ...' relative to the repository, for another machine.
    """
    overrides = hparam_search.flags({**parse_extra(FLAGS.extra), **trial})
    common = ['--config', FLAGS.config, '--workdir', trial_dir, *overrides]
    python = 'python' if portable else sys.executable
    script = (lambda name: name) if portable else (lambda name: os.path.join(ROOT, name))
    cmds = [[python, script('train.py'), *common]]
    if FLAGS.eval:
        cmds.append([python, script('eval.py'), *common, *shlex.split(FLAGS.eval_flags)])
    return cmds


class CoreSlots:
    """Disjoint sets of ``per_trial`` CPU cores, one per running trial (``None``: no pinning)."""

    def __init__(self, per_trial: int, parallel: int):
        self.free: list[set[int] | None] = [None] * parallel
        if per_trial:
            cores = sorted(os.sched_getaffinity(0))
            if per_trial * parallel > len(cores):
                raise SystemExit(f'Error: --parallel={parallel} x --cores_per_trial={per_trial} '
                                 f'needs {per_trial * parallel} cores; this process has '
                                 f'{len(cores)}.')
            self.free = [set(cores[i * per_trial:(i + 1) * per_trial]) for i in range(parallel)]
        self.lock = threading.Lock()

    def take(self) -> set[int] | None:
        with self.lock:
            return self.free.pop()

    def give(self, cores: set[int] | None) -> None:
        with self.lock:
            self.free.append(cores)


def last_error(log_path: str) -> str:
    with open(log_path, errors='replace') as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith(('Error', 'Traceback'))
              or 'Error:' in line or 'Stopped by' in line]
    return (errors or lines or ['(no output)'])[-1][:500]


def run_trial(trial: dict, index: int, total: int, on_validation=None) -> dict:
    """Runs (or skips, or resumes) one trial on free cores; returns its record."""
    cores = SLOTS.take()
    try:
        return _run_trial(trial, index, total, on_validation, cores)
    finally:
        SLOTS.give(cores)


def _run_trial(trial: dict, index: int, total: int, on_validation, cores) -> dict:
    """Runs (or skips, or resumes) one trial; returns its record, also saved in trial.json.

    ``on_validation(curve)`` is called every few seconds while it trains with the validation
    curve so far, [(step, value)]; returning True prunes the trial (Optuna). ``cores``: the
    CPU cores its processes may use (None: any).
    """
    name = hparam_search.trial_name(trial)
    trial_dir = os.path.join(FLAGS.workdir, name)
    status_path = os.path.join(trial_dir, STATUS_FILE)
    if os.path.exists(status_path):
        with open(status_path) as f:
            record = json.load(f)
        if record['status'] in ('done', 'failed'):
            print(f'[{index}/{total}] {name}: {record["status"]} before, skipped', flush=True)
            return record
    os.makedirs(trial_dir, exist_ok=True)
    start = time.time()
    record = {'name': name, 'overrides': trial, 'status': 'done', 'error': '',
              'cores': sorted(cores) if cores else None}
    if cores:
        print(f'[{index}/{total}] {name}: started on core(s) '
              f'{",".join(map(str, record["cores"]))}', flush=True)
    for cmd in commands(trial, trial_dir):
        log_path = os.path.join(trial_dir, os.path.basename(cmd[1]).replace('.py', '.log'))
        with open(log_path, 'a') as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            if cores:  # before Python starts any thread, which would inherit it
                os.sched_setaffinity(process.pid, cores)
            pruned = False
            while process.poll() is None:
                time.sleep(2.0)
                if on_validation and cmd[1].endswith('train.py') and not pruned:
                    pruned = on_validation(hparam_search.validation_curve(trial_dir, FLAGS.metric))
                    if pruned:  # SIGTERM: the trial saves a checkpoint and stops
                        process.send_signal(signal.SIGTERM)
        if pruned:
            record.update(status='pruned')
            break
        if process.returncode != 0:
            record.update(status='failed', error=last_error(log_path))
            break
    record.update(seconds=round(time.time() - start, 1), metrics=hparam_search.trial_metrics(trial_dir))
    if record['status'] != 'pruned':  # a pruned trial may be resumed by a later study
        with open(status_path, 'w') as f:
            json.dump(record, f, indent=2)
    value = record['metrics'].get(FLAGS.metric)
    summary = record['error'] or (f'{FLAGS.metric} {value:.4g}' if value is not None else '')
    print(f'[{index}/{total}] {name}: {record["status"]} in {record["seconds"]:.0f} s  {summary}',
          flush=True)
    return record


def write_results(records: list[dict]) -> None:
    """results.csv, results.md sorted by the metric, and sweep.png."""
    keys = list(dict.fromkeys(k for r in records for k in r['overrides']))
    metric_names = list(hparam_search.METRICS)
    rows = [{'trial': r['name'], 'status': r['status'], **{k: '' for k in keys}, **r['overrides'],
             **{m: r.get('metrics', {}).get(m, '') for m in metric_names}, 'error': r['error']}
            for r in records]
    with open(os.path.join(FLAGS.workdir, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, ['trial', 'status', *keys, *metric_names, 'error'])
        writer.writeheader()
        writer.writerows(rows)

    larger_is_better = hparam_search.METRICS[FLAGS.metric]
    scored = [r for r in rows if r[FLAGS.metric] != '']
    scored.sort(key=lambda r: r[FLAGS.metric], reverse=larger_is_better)
    unscored = [r for r in rows if r[FLAGS.metric] == '']
    shown = [m for m in metric_names if any(r[m] != '' for r in rows)]
    cols = [*keys, *shown, 'status']
    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    for r in scored + unscored:
        cells = [hparam_search.format_value(r.get(k, '')) if k in keys else
                 (f'{r[k]:.4g}' if isinstance(r[k], float) else str(r[k])) for k in cols[:-1]]
        status = r['status'] + (f': {r["error"]}' if r['error'] else '')
        lines.append('| ' + ' | '.join(cells + [status.replace('|', '/')]) + ' |')
    table = '\n'.join(lines)
    with open(os.path.join(FLAGS.workdir, 'results.md'), 'w') as f:
        f.write(f'Sorted by {FLAGS.metric} ({"higher" if larger_is_better else "lower"} is '
                'better).\n\n' + table + '\n')
    print('\n' + table)
    plot(scored, keys)


def plot(rows: list[dict], keys: list[str]) -> None:
    """sweep.png: the metric of each scored trial against each hyperparameter it sets."""
    keys = [k for k in keys if any(r[k] != '' for r in rows)]
    if not rows or not keys:
        return
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rows_with = [r for r in rows if r[key] != '']
        xs = [r[key] for r in rows_with]
        numeric = all(isinstance(x, (int, float)) for x in xs)
        ax.scatter(xs if numeric else [str(x) for x in xs], [r[FLAGS.metric] for r in rows_with])
        if numeric and min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale('log')
        ax.tick_params(axis='x', labelrotation=30)
        ax.set_xlabel(key)
        ax.set_ylabel(FLAGS.metric)
    fig.tight_layout()
    fig.savefig(os.path.join(FLAGS.workdir, 'sweep.png'), dpi=100)
    plt.close(fig)


def run_list(trials: list[dict]) -> list[dict]:
    total = len(trials)
    with concurrent.futures.ThreadPoolExecutor(max_workers=FLAGS.parallel) as pool:
        futures = [pool.submit(run_trial, t, i + 1, total) for i, t in enumerate(trials)]
        return [f.result() for f in futures]


def run_optuna(trials: list[dict], space) -> list[dict]:
    try:
        import optuna
    except ImportError:
        raise SystemExit('Error: --mode optuna needs Optuna: pip install optuna') from None
    space = space or hparam_search.search_space(trials)
    storage = FLAGS.study_storage or f'sqlite:///{os.path.abspath(FLAGS.workdir)}/study.db'
    larger_is_better = hparam_search.METRICS[FLAGS.metric]
    study = optuna.create_study(
        study_name=os.path.basename(os.path.abspath(FLAGS.workdir)), storage=storage,
        load_if_exists=True, direction='maximize' if larger_is_better else 'minimize',
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    lock = threading.Lock()
    records = []

    def suggest(trial):
        values = {}
        for key, dist in space.items():
            if isinstance(dist, hparam_search.LogUniform):
                values[key] = float(f'{trial.suggest_float(key, dist.low, dist.high, log=True):.3g}')
            elif isinstance(dist, hparam_search.Uniform):
                values[key] = float(f'{trial.suggest_float(key, dist.low, dist.high):.3g}')
            else:
                values[key] = trial.suggest_categorical(key, list(dist.options))
        return values

    def one(index):
        with lock:
            trial = study.ask()
        overrides = suggest(trial)
        reported = set()

        def on_validation(curve):
            for step, value in curve:
                if step not in reported:
                    reported.add(step)
                    trial.report(value, step)
            return bool(reported) and trial.should_prune()

        record = run_trial(overrides, index, FLAGS.n_trials, on_validation)
        value = record.get('metrics', {}).get(FLAGS.metric)
        with lock:
            if record['status'] == 'pruned':
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            elif record['status'] == 'failed' or value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value)
            records.append(record)

    with concurrent.futures.ThreadPoolExecutor(max_workers=FLAGS.parallel) as pool:
        list(pool.map(one, range(1, FLAGS.n_trials + 1)))
    return records


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    trials, space = load_sweep(FLAGS.config)
    if FLAGS.dry_run:
        for trial in trials:
            trial_dir = os.path.join(FLAGS.workdir, hparam_search.trial_name(trial))
            cmds = commands(trial, trial_dir, portable=True)
            print(' && '.join(' '.join(shlex.quote(part) for part in cmd) for cmd in cmds))
        return
    os.makedirs(FLAGS.workdir, exist_ok=True)
    global SLOTS
    SLOTS = CoreSlots(FLAGS.cores_per_trial, FLAGS.parallel)
    print(f'{len(trials) if FLAGS.mode == "list" else FLAGS.n_trials} trials of {FLAGS.config} '
          f'in {FLAGS.workdir}, {FLAGS.parallel} at a time', flush=True)
    records = run_list(trials) if FLAGS.mode == 'list' else run_optuna(trials, space)
    write_results(records)
    failed = sum(r['status'] == 'failed' for r in records)
    print(f'\n{len(records) - failed} of {len(records)} trials finished; results in '
          f'{FLAGS.workdir}/results.csv, results.md, sweep.png')


if __name__ == '__main__':
    app.run(main)
