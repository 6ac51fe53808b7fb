"""The training loop: ``train_and_evaluate(config, workdir)``, importable from a notebook.

Read it top to bottom: set up the workdir, the data, the model and optimizer, resume from
the latest checkpoint if there is one, then step, log, evaluate and checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from transformer import (
    checkpoint,
    config_lib,
    datasets,
    flops,
    input_pipeline,
    losses,
    recase,
    sharding,
    steps,
    writers,
)
from transformer.model import count_params
from transformer.tokenizer import TOKENIZER_FILE, Tokenizer, get_tokenizer

log = logging.getLogger('transformer')


@dataclasses.dataclass
class Run:
    """What the loop builds from a config and a workdir before its first step."""
    config: ml_collections.ConfigDict
    workdir: str
    splits: dict                 # 'train' and 'validation' -> list of (source, target) strings
    tokenizer: Tokenizer
    lengths: input_pipeline.Lengths
    num_params: int
    make_model: Callable[[], nnx.Module]
    optimizer: optax.GradientTransformation
    graphdef: nnx.GraphDef
    abstract_state: steps.TrainState  # shapes, dtypes and shardings; no values yet
    checkpointer: checkpoint.Checkpointer
    mesh: jax.sharding.Mesh
    state_sharding: steps.TrainState  # the NamedSharding of every leaf of the state


def is_chief() -> bool:
    """Process 0 alone writes logs, metrics, the tokenizer and the run record."""
    return jax.process_index() == 0


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
    """Validates the config, loads the data and tokenizer, lays out the sharded train state."""
    mesh = checked_mesh(config)  # a bad config, mesh or batch fails here, before any work
    workdir = os.path.abspath(os.path.expanduser(workdir))
    d, t = config.data, config.train
    splits = datasets.load_splits(d.dataset, d.data_dir, ('train', 'validation'),
                                  manual_dir=d.manual_dir, **d.builder_kwargs)
    if is_chief():
        tokenizer = get_tokenizer(workdir, splits['train'], d.vocab_size, lowercase=d.lowercase)
        if d.lowercase:  # eval.py and translate.py restore case to the lowercase output
            recase.get_recaser(workdir, (target for _, target in splits['train']))
    sharding.barrier('tokenizer')  # the others load what process 0 trained
    if not is_chief():
        tokenizer = Tokenizer.load(os.path.join(workdir, TOKENIZER_FILE))
    lengths = input_pipeline.Lengths(d.max_source_length, d.max_target_length)
    make_model, optimizer, graphdef, abstract, state_sharding = state_layout(
        config, mesh, tokenizer.vocab_size)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), t.max_checkpoints,
                                   writer=True)
    return Run(config, workdir, splits, tokenizer, lengths, count_params(abstract.params),
               make_model, optimizer, graphdef, abstract, ckpt, mesh, state_sharding)


def checked_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
    """Validates ``config`` and returns its mesh over ``devices`` (default: all), once the
    batch is known to split."""
    config_lib.validate(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.check_batch(mesh, config.train.batch_size)
    return mesh


def state_layout(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, vocab_size: int):
    """(make_model, optimizer, graphdef, abstract TrainState, its shardings on ``mesh``):
    everything about the train state but its values (``steps.init_state`` makes those, or a
    checkpoint restores them). The abstract state's leaves carry their shardings."""
    make_model = config_lib.make_model(config, vocab_size)
    optimizer = config_lib.make_optimizer(config)
    graphdef, abstract = steps.abstract_state(make_model, optimizer)
    state_sharding = sharding.state_shardings(abstract, mesh, config.mesh.rules.to_dict())
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, state_sharding)
    return make_model, optimizer, graphdef, abstract, state_sharding


def write_run_info(run: Run) -> None:
    """Makes the workdir self-describing: the resolved config and the code version."""
    with open(os.path.join(run.workdir, 'config.json'), 'w') as f:
        f.write(run.config.to_json_best_effort(indent=2))
    info = {'git': git_hash(), 'jax': jax.__version__, 'devices': [str(x) for x in jax.devices()],
            'processes': jax.process_count(), 'mesh': dict(run.mesh.shape),
            'vocab_size': run.tokenizer.vocab_size, 'parameters': run.num_params,
            'prng_impl': jax.config.jax_default_prng_impl}
    with open(os.path.join(run.workdir, 'run_info.json'), 'w') as f:
        json.dump(info, f, indent=2)


def evaluate_loss(eval_step, params, batches, batch_sharding) -> dict[str, float]:
    """Token-averaged loss, perplexity and accuracy over ``batches`` (same in every process)."""
    sums = None
    for batch in batches:
        out = eval_step(params, sharding.replicated_batch(batch, batch_sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
        raise datasets.DatasetError('The validation split is empty: nothing to evaluate.')
    return losses.summarize(sums)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains ``config`` into ``workdir`` (resuming if it holds a checkpoint).

    Returns the last validation metrics.
    """
    # 1. Set up: config check, data, tokenizer, model, optimizer, workdir record.
    run = setup(config, workdir)
    t = config.train
    log.info('Model %s: %s parameters; vocabulary %d', config.model.variant,
             f'{run.num_params:,}', run.tokenizer.vocab_size)
    dropped = input_pipeline.count_too_long(run.splits['train'], run.tokenizer, run.lengths)
    log.info('Training pairs longer than %s are skipped: %d of %d', run.lengths, dropped,
             len(run.splits['train']))
    if dropped == len(run.splits['train']):
        raise config_lib.ConfigError(
            f'Every training pair is longer than {run.lengths} tokens; raise '
            'config.data.max_source_length / max_target_length.')
    train_iter = _train_batches(run)
    batch_sharding = sharding.batch_sharding(run.mesh)
    log.info('Mesh %s over %d devices in %d process(es); %s', dict(run.mesh.shape),
             run.mesh.size, jax.process_count(), jax.devices()[0].platform)

    # 2. Resume from the latest checkpoint, data position included.
    #    A fresh run initialises the state instead, each array created on its devices.
    restored = run.checkpointer.restore(run.abstract_state)  # the newest readable checkpoint
    if restored is None:
        state = steps.init_state(run.make_model, run.optimizer, run.state_sharding)
    else:
        state, data_state = restored  # (restored straight into the mesh's shardings)
        train_iter.set_state(data_state)
        log.info('Resumed from step %d in %s', int(state.step), run.checkpointer.directory)
    if t.time_budget_minutes > 0:
        fit_steps_to_budget(run, state, train_iter, batch_sharding)
    if is_chief():
        write_run_info(run)  # only now: a refused resume leaves the run's record as it was
    start = int(state.step)
    if start >= t.num_steps:
        log.info('Already trained to step %d (train.num_steps=%d): nothing to do. Raise '
                 '--config.train.num_steps to train further%s.', start, t.num_steps,
                 f' (with a time budget: num_steps in {BUDGET_FILE})'
                 if t.time_budget_minutes > 0 else '')

    # 3. Compile the steps.
    train_step = _make_train_step(run, batch_sharding)
    eval_step = steps.make_eval_step(run.graphdef, label_smoothing=t.label_smoothing,
                                     params_sharding=run.state_sharding.params,
                                     batch_sharding=batch_sharding)
    # Validation rows: rounded up to split evenly over the mesh (padding rows weigh nothing).
    rows = sharding.batch_rows_multiple(run.mesh)
    eval_rows = -(-config.eval.batch_size // rows) * rows
    schedule = config_lib.make_schedule(config)
    writer = writers.MetricWriter(run.workdir, enabled=is_chief())
    utilization = Utilization(config, run.tokenizer.vocab_size, run.mesh.size)
    profiler = Profiler(os.path.join(run.workdir, 'profile'), t.profile_start, t.profile_steps)

    # 4. The loop: step; every log_every steps log, every eval_every evaluate, every
    #    checkpoint_every save. Metric sums stay on device between logs (no per-step sync or
    #    dispatch); whether a step's loss was not finite is checked before any save.
    progress = tqdm(total=t.num_steps, initial=start, desc='train', unit='step',
                    dynamic_ncols=True, mininterval=1.0, disable=not is_chief())
    pending, tokens, tick = [], 0, time.perf_counter()  # per-step metric sums since the last log
    val_metrics: dict[str, float] = {}
    try:
        with StopOnSignal() as stop:
            for step in range(start + 1, t.num_steps + 1):
                local = next(train_iter)
                tokens += int(np.count_nonzero(local['targets'])) * jax.process_count()
                profiler.before(step)
                state, step_sums = train_step(state, sharding.global_batch(local, batch_sharding))
                profiler.after(step, state)
                pending.append((step, step_sums))  # no work dispatched per step beyond the step
                progress.update(1)
                last = step == t.num_steps
                stopping = stop.signal is not None  # read once: a signal may land mid-iteration
                save = step % t.checkpoint_every == 0 or last or stopping

                if step % t.log_every == 0 or last or save:
                    _check_finite(pending, run.checkpointer)
                if step % t.log_every == 0 or last:
                    summary = losses.summarize(_total(pending))
                    seconds = time.perf_counter() - tick
                    summary.update(tokens_per_sec=tokens / seconds,
                                   step_seconds=seconds / len(pending),
                                   mfu=utilization.mfu(len(pending), seconds),
                                   learning_rate=float(schedule(step - 1)))
                    writer.write(step, 'train', summary)
                    progress.set_postfix(loss=f'{summary["loss"]:.3f}',
                                         acc=f'{summary["accuracy"]:.1f}%',
                                         tok_s=f'{summary["tokens_per_sec"]:,.0f}',
                                         mfu=f'{summary["mfu"]:.1%}')
                    pending, tokens, tick = [], 0, time.perf_counter()

                if step % t.eval_every == 0 or last:
                    batches = itertools.islice(input_pipeline.eval_batches(
                        run.splits['validation'], run.tokenizer, run.lengths, eval_rows),
                        t.eval_batches)
                    eval_start = time.perf_counter()
                    val_metrics = evaluate_loss(eval_step, state.params, batches, batch_sharding)
                    writer.write(step, 'validation', val_metrics)
                    progress.write(f'step {step}: validation loss {val_metrics["loss"]:.4f}, '
                                   f'accuracy {val_metrics["accuracy"]:.2f}%')
                    tick += time.perf_counter() - eval_start  # not training throughput

                if save:
                    run.checkpointer.save(step, state, _gather_data_state(train_iter))
                if stopping:
                    raise TrainingInterrupted(step, stop.signal, run.checkpointer.directory)
    finally:  # also on errors: pending checkpoint writes complete, files are closed
        profiler.stop()
        progress.close()
        run.checkpointer.close()
        writer.close()
    return val_metrics


def _make_train_step(run: Run, batch_sharding):
    config, t = run.config, run.config.train
    return steps.make_train_step(run.graphdef, run.optimizer, label_smoothing=t.label_smoothing,
                                 dropout_seed=config.seed + 1,
                                 grad_accum_steps=t.grad_accum_steps, rdrop_alpha=t.rdrop_alpha,
                                 state_sharding=run.state_sharding,
                                 batch_sharding=batch_sharding)


BUDGET_FILE = 'budget.json'
CALIBRATION_STEPS = 10


def fit_steps_to_budget(run: Run, state: steps.TrainState, train_iter, batch_sharding) -> None:
    """Sets ``train.num_steps`` (and the optimizer's schedule) to the steps that fit in
    ``train.time_budget_minutes`` of training, so the schedule ends where the budget does.

    The step time is measured once, over ``CALIBRATION_STEPS`` steps on a copy of the state
    and the run's first batch (after one step that compiles; the data position is left as
    it was), and saved with the step count in WORKDIR/budget.json; a resumed run reads the
    count back, so it trains the same steps as an uninterrupted one. Compilation, evaluation
    and checkpoints are outside the budget. With several processes the slowest one counts.
    """
    t = run.config.train
    path = os.path.join(run.workdir, BUDGET_FILE)
    if os.path.exists(path):
        with open(path) as f:
            budget = json.load(f)
        if budget['time_budget_minutes'] != t.time_budget_minutes:
            raise config_lib.ConfigError(
                f'config.train.time_budget_minutes={t.time_budget_minutes}, but this run was '
                f'started with {budget["time_budget_minutes"]} ({path}); resume with that, or '
                'train into a new --workdir.')
    else:
        data_state = _gather_data_state(train_iter)
        batch = sharding.global_batch(next(train_iter), batch_sharding)
        train_iter.set_state(data_state)
        probe_step = _make_train_step(run, batch_sharding)
        probe = jax.tree.map(jnp.copy, state)  # the step donates its input state
        probe, _ = probe_step(probe, batch)
        jax.block_until_ready(probe)
        start = time.perf_counter()
        for _ in range(CALIBRATION_STEPS):
            probe, _ = probe_step(probe, batch)
        jax.block_until_ready(probe)
        step_seconds = max(round(max(sharding.allgather_json(  # (not 0 for a tiny step)
            (time.perf_counter() - start) / CALIBRATION_STEPS)), 4), 1e-4)
        del probe
        budget = {'time_budget_minutes': t.time_budget_minutes, 'step_seconds': step_seconds,
                  'num_steps': max(1, int(t.time_budget_minutes * 60 / step_seconds))}
        if is_chief():
            with open(path, 'w') as f:
                json.dump(budget, f, indent=2)
    if budget['num_steps'] <= t.warmup_steps:
        raise config_lib.ConfigError(
            f'config.train.time_budget_minutes={t.time_budget_minutes} fits only '
            f'{budget["num_steps"]} steps of {budget["step_seconds"]:.3f} s, not more than '
            f'train.warmup_steps={t.warmup_steps}; raise the budget or lower the warm-up.')
    t.num_steps = budget['num_steps']
    run.optimizer = config_lib.make_optimizer(run.config)
    log.info('Time budget %g min at %.3f s/step (%s): train.num_steps=%d',
             t.time_budget_minutes, budget['step_seconds'], path, t.num_steps)


class Utilization:
    """Model FLOPs utilization of training steps: ``transformer.flops`` model FLOPs of a
    step's padded rows over the devices' peak (a data sheet's, or on a CPU a bfloat16
    matmul measured here at start-up)."""

    def __init__(self, config: ml_collections.ConfigDict, vocab_size: int, num_devices: int):
        d, t = config.data, config.train
        self.step_flops = flops.train_flops(config_lib.model_config(config, vocab_size),
                                            d.max_source_length, d.max_target_length,
                                            t.batch_size * t.grad_accum_steps)
        m = config.model
        peak, source = flops.peak_flops_per_device(m.matmul_dtype or m.dtype)
        self.peak = peak * num_devices
        log.info('MFU is model FLOPs over %d device(s) x %.3g FLOP/s (%s)', num_devices, peak,
                 source)

    def mfu(self, num_steps: int, seconds: float) -> float:
        return num_steps * self.step_flops / seconds / self.peak


class Profiler:
    """A ``jax.profiler`` trace of steps start + 1 .. start + count into ``directory``
    (TensorBoard's profile plugin reads it; the .trace.json.gz opens in Perfetto). A run
    resumed after step start + 1 takes no trace."""

    def __init__(self, directory: str, start: int, count: int):
        self.directory, self.first, self.last = directory, start + 1, start + count
        self.active = False

    def before(self, step: int) -> None:
        if step == self.first and self.last >= self.first:
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.active = True
            log.info('Profiling steps %d to %d into %s', self.first, self.last, self.directory)

    def after(self, step: int, state) -> None:
        if self.active and step == self.last:
            jax.block_until_ready(state)  # the trace covers the steps' device work
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def _train_batches(run: Run) -> input_pipeline.ShardedBatches:
    """This process's rows of each training batch (see ``input_pipeline.ShardedBatches``)."""
    config, t = run.config, run.config.train
    num_shards = config.data.input_shards or jax.process_count()
    rows = t.batch_size * t.grad_accum_steps
    if rows % num_shards or num_shards % jax.process_count():
        raise config_lib.ConfigError(
            f'config.data.input_shards={num_shards}: it must divide the {rows} rows of a batch '
            f'(train.batch_size x grad_accum_steps) and be a multiple of the '
            f'{jax.process_count()} processes; 0 = one shard per process.')
    return input_pipeline.ShardedBatches(
        run.splits['train'], run.tokenizer, run.lengths, rows // num_shards, config.seed,
        pack=config.data.pack, num_shards=num_shards, process_index=jax.process_index(),
        process_count=jax.process_count(), subword_nbest=config.data.subword_nbest,
        subword_alpha=config.data.subword_alpha)


def _gather_data_state(train_iter: input_pipeline.ShardedBatches) -> dict:
    """Every process's input-shard states in one dict (process 0 writes it)."""
    shards = {}
    for state in sharding.allgather_json(train_iter.get_state()):
        shards.update(state['shards'])
    return {'shards': shards}


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN or infinite; no checkpoint holds the bad state."""


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped training after a checkpoint of the current step."""

    def __init__(self, step: int, signum: int, directory: str):
        self.step, self.signum = step, signum
        super().__init__(f'{signal.Signals(signum).name} at step {step}: saved a checkpoint in '
                         f'{directory}. Run the same command again to resume from it.')


def _total(pending: list[tuple[int, dict]]) -> dict:
    """The metric sums of the steps in ``pending``, added up in one computation."""
    return jax.tree.map(lambda *sums: jnp.sum(jnp.stack(sums)), *(s for _, s in pending))


def _check_finite(pending: list[tuple[int, dict]], checkpointer: checkpoint.Checkpointer) -> None:
    """Raises ``NonFiniteLossError`` naming the first step in ``pending`` with a non-finite
    loss or gradient (``pending``: (step, metric sums) since the last log)."""
    if not pending:
        return
    flags = np.asarray(jnp.stack([s['nonfinite'] for _, s in pending]))
    first_bad_step = next((step for (step, _), bad in zip(pending, flags) if bad > 0), 0)
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
