"""The training loop: ``train_and_evaluate(config, workdir)``, importable from a notebook.

Read it top to bottom: set up the workdir, the data, the model and optimizer, resume from
the latest checkpoint if there is one, then step, log, evaluate and checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from transformer import checkpoint, config_lib, data, inference, metrics, tasks, train_lib
from transformer.model import EncoderDecoder, count_params

log = logging.getLogger('transformer')


@dataclasses.dataclass
class Run:
    """What training and evaluation both build from a config and a workdir."""
    config: ml_collections.ConfigDict
    workdir: str
    splits: dict               # split name -> list of (source, target) strings
    tokenizer: data.Tokenizer
    lengths: data.Lengths
    model: EncoderDecoder      # freshly initialised; the trained values live in `state`
    optimizer: object
    graphdef: object
    state: train_lib.TrainState
    checkpointer: checkpoint.Checkpointer


def git_hash() -> str:
    """The commit of the code being run, with '-dirty' if it has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return rev + ('-dirty' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates the config, loads the data and tokenizer, builds model and optimizer."""
    config_lib.validate(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    d, t = config.data, config.train
    splits = tasks.load_splits(d.dataset, d.data_dir, manual_dir=d.manual_dir,
                               **d.builder_kwargs)
    tokenizer = data.get_tokenizer(workdir, splits['train'], d.vocab_size)
    lengths = data.Lengths(d.max_source_length, d.max_target_length)
    model, optimizer, graphdef, state = inference.build_state(config, tokenizer.vocab_size)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), t.max_checkpoints,
                                   writer=True)
    return Run(config, workdir, splits, tokenizer, lengths, model, optimizer, graphdef, state, ckpt)


def write_run_info(run: Run) -> None:
    """Makes the workdir self-describing: the resolved config and the code version."""
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
        f.write(run.config.to_json_best_effort(indent=2))
    info = {'git': git_hash(), 'jax': jax.__version__, 'devices': [str(x) for x in jax.devices()],
            'vocab_size': run.tokenizer.vocab_size, 'parameters': count_params(run.model)}
    with open(os.path.join(run.workdir, 'run_info.json'), 'w') as f:
        json.dump(info, f, indent=2)


def evaluate_loss(eval_step, params, batches) -> dict[str, float]:
    """Token-averaged loss, perplexity and accuracy over ``batches``."""
    sums = None
    for batch in batches:
        out = eval_step(params, batch)
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise ValueError('The validation split is empty: nothing to evaluate.')
    return train_lib.summarize(sums)


def _take(iterator, n):
    for _, item in zip(range(n), iterator):
        yield item


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` into ``workdir`` (resuming if it holds a checkpoint).

    Returns the last validation metrics.
    """
    # 1. Set up: config check, data, tokenizer, model, optimizer, workdir record.
    run = setup(config, workdir)
    t = config.train
    log.info('Model %s: %s parameters; vocabulary %d', config.model.variant,
             f'{count_params(run.model):,}', run.tokenizer.vocab_size)
    dropped = data.count_too_long(run.splits['train'], run.tokenizer, run.lengths)
    log.info('Training pairs longer than %s are skipped: %d of %d', run.lengths, dropped,
             len(run.splits['train']))
    if dropped == len(run.splits['train']):
        raise config_lib.ConfigError(
            f'Every training pair is longer than {run.lengths} tokens; raise '
            'config.data.max_source_length / max_target_length.')
    train_iter = iter(data.train_dataset(run.splits['train'], run.tokenizer, run.lengths,
                                         t.batch_size * t.grad_accum_steps, seed=config.seed,
                                         pack=config.data.pack))

    # 2. Resume from the latest checkpoint, data position included.
    state = run.state
    if run.checkpointer.latest_step() is not None:
        state, data_state = run.checkpointer.restore(state)
        train_iter.set_state(data_state)
        log.info('Resumed from step %d in %s', int(state.step), run.checkpointer.directory)
    write_run_info(run)  # only now: a refused resume leaves the run's record as it was
    start = int(state.step)
    if start >= t.num_steps:
        log.info('Already trained to step %d (train.num_steps=%d): nothing to do. Raise '
                 '--config.train.num_steps to train further.', start, t.num_steps)

    # 3. Compile the steps.
    train_step = train_lib.make_train_step(run.graphdef, run.optimizer,
                                           label_smoothing=t.label_smoothing,
                                           dropout_seed=config.seed + 1,
                                           grad_accum_steps=t.grad_accum_steps)
    eval_step = train_lib.make_eval_step(run.graphdef, label_smoothing=t.label_smoothing)
    schedule = train_lib.learning_rate_schedule(t.learning_rate, t.warmup_steps, t.schedule,
                                                t.num_steps)
    writer = metrics.MetricWriter(run.workdir)

    # 4. The loop: step; every log_every steps log, every eval_every evaluate, every
    #    checkpoint_every save. Metric sums stay on device between logs (no per-step sync);
    #    so does the first step whose loss was not finite, which is checked before any save.
    progress = tqdm(total=t.num_steps, initial=start, desc='train', unit='step',
                    dynamic_ncols=True, mininterval=1.0)
    sums, tokens, tick = None, 0, time.perf_counter()
    first_nonfinite = jnp.zeros((), jnp.int32)
    val_metrics: dict[str, float] = {}
    try:
        with StopOnSignal() as stop:
            for step in range(start + 1, t.num_steps + 1):
                batch = next(train_iter)
                tokens += int(np.count_nonzero(batch['targets']))
                state, step_sums = train_step(state, batch)
                sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
                first_nonfinite = jnp.where((first_nonfinite == 0) & (step_sums['nonfinite'] > 0),
                                            step, first_nonfinite)
                progress.update(1)
                last = step == t.num_steps
                stopping = stop.signal is not None  # read once: a signal may land mid-iteration
                save = step % t.checkpoint_every == 0 or last or stopping

                if step % t.log_every == 0 or last or save:
                    _check_finite(int(first_nonfinite), run.checkpointer)
                if step % t.log_every == 0 or last:
                    summary = train_lib.summarize(sums)
                    summary.update(tokens_per_sec=tokens / (time.perf_counter() - tick),
                                   learning_rate=float(schedule(step - 1)))
                    writer.write(step, 'train', summary)
                    progress.set_postfix(loss=f'{summary["loss"]:.3f}',
                                         acc=f'{summary["accuracy"]:.1f}%',
                                         tok_s=f'{summary["tokens_per_sec"]:,.0f}')
                    sums, tokens, tick = None, 0, time.perf_counter()

                if step % t.eval_every == 0 or last:
                    batches = _take(data.eval_batches(run.splits['validation'], run.tokenizer,
                                                      run.lengths, config.eval.batch_size),
                                    t.eval_batches)
                    val_metrics = evaluate_loss(eval_step, state.params, batches)
                    writer.write(step, 'validation', val_metrics)
                    progress.write(f'step {step}: validation loss {val_metrics["loss"]:.4f}, '
                                   f'accuracy {val_metrics["accuracy"]:.2f}%')
                    tick = time.perf_counter()  # evaluation time is not training throughput

                if save:
                    run.checkpointer.save(step, state, train_iter.get_state())
                if stopping:
                    raise TrainingInterrupted(step, stop.signal, run.checkpointer.directory)
    finally:  # also on errors: pending checkpoint writes complete, files are closed
        progress.close()
        run.checkpointer.close()
        writer.close()
    return val_metrics


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN or infinite; no checkpoint holds the bad state."""


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped training after a checkpoint of the current step."""

    def __init__(self, step: int, signum: int, directory: str):
        self.step, self.signum = step, signum
        super().__init__(f'{signal.Signals(signum).name} at step {step}: saved a checkpoint in '
                         f'{directory}. Run the same command again to resume from it.')


def _check_finite(first_bad_step: int, checkpointer: checkpoint.Checkpointer) -> None:
    if first_bad_step:
        raise NonFiniteLossError(
            f'The loss or gradient became NaN or infinite at step {first_bad_step}. Training '
            f'stopped without saving; the latest checkpoint (step {checkpointer.latest_step()}) '
            'is intact. Lower train.learning_rate, raise train.warmup_steps or set '
            'train.grad_clip_norm, then run again (it resumes from that checkpoint).')


class StopOnSignal:
    """Turns SIGTERM and the first Ctrl-C into a flag the loop checks after every step.

    The loop then saves a checkpoint of the step it finished and exits: a preempted job
    loses nothing. A second Ctrl-C stops at once, as usual. Outside the main thread (where
    Python cannot install handlers) signals keep their default behaviour.
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning('Received %s: stopping after this step and saving a checkpoint '
                    '(Ctrl-C again to abort without saving).', signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
