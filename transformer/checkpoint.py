"""Orbax checkpoints of the train state and the data-iterator state, with auto-resume.

Each checkpoint is a step directory under ``workdir/checkpoints`` holding two items:
``state`` (the ``TrainState`` arrays, no pickle) and ``data`` (the grain iterator state as
JSON). Orbax writes to a temporary directory and renames it when complete, so a crash in
the middle of a write leaves the previous checkpoint as the latest one. A checkpoint damaged
afterwards (a truncated or deleted file) is skipped with a warning naming it, in favour of
the newest one that reads.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator

import jax
import orbax.checkpoint as ocp

log = logging.getLogger('transformer')


def _restore_args(abstract_tree, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Orbax arguments that restore arrays with the shapes, dtypes and shardings of the tree."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_tree)
    return ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=partial)


class CheckpointMismatchError(ValueError):
    """The checkpoint's parameters do not have the shapes the model expects."""


class NoReadableCheckpointError(FileNotFoundError):
    """Checkpoints exist, but none of them can be read."""


def _name(path) -> str:
    """A key path as a dotted name, e.g. params.decoder.0.self_attention.query.kernel."""
    parts = []
    for key in path:
        for attr in ('key', 'idx', 'name'):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    if parts and parts[-1] == 'value':  # nnx.Variable's own field adds nothing to read
        parts.pop()
    return '.'.join(parts)


class Checkpointer:
    """Saves and restores (TrainState, data state) pairs by step."""

    def __init__(self, directory: str, max_to_keep: int | None = 3, *, writer: bool = False):
        """``writer``: the training process, which alone removes half-written checkpoints
        (a reader such as eval.py must not touch a write in progress)."""
        self.directory = os.path.abspath(directory)
        self.writer = writer
        self.manager = ocp.CheckpointManager(
            self.directory,
            # A write killed half-way leaves a temporary directory; it is never taken for a
            # checkpoint, and the next training start removes it.
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 cleanup_tmp_directories=writer),
            item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                           'data': ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None = None) -> None:
        """Writes checkpoint ``step`` (waits for the previous asynchronous write first)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state or {})),
            force=True)

    def restore(self, abstract_state):
        """Restores the newest readable checkpoint into the structure of ``abstract_state``.

        Returns (state, data_state), or None if there is no checkpoint at all. Damaged
        checkpoints are skipped (see ``_readable``); if none reads, raises
        ``NoReadableCheckpointError``. The training process (``writer``) renames the damaged
        ones newer than the one restored to ``<step>.unreadable``, so that training can write
        those steps again and nothing is deleted.
        """
        for step, restored in self._readable(lambda step: self.manager.restore(
                step, args=ocp.args.Composite(state=_restore_args(abstract_state),
                                              data=ocp.args.JsonRestore())),
                abstract_state):
            newer = [s for s in self.all_steps() if s > step]
            if newer and self.writer:  # (one process: see _readable)
                for damaged in newer:
                    path = os.path.join(self.directory, str(damaged))
                    aside = path + '.unreadable'
                    for n in itertools.count(2):  # never over an earlier one
                        if not os.path.exists(aside):
                            break
                        aside = f'{path}.unreadable{n}'
                    os.replace(path, aside)
                    log.warning('Moved the unreadable checkpoint %s to %s; training resumes '
                                'from step %d.', path, aside, step)
                self.manager.reload()
            return restored['state'], restored['data']
        return None

    def readable_params(self, abstract_params) -> Iterator[tuple[int, object]]:
        """(step, parameters) of each readable checkpoint, newest first (for inference).

        The optimizer state is neither read nor required to match, so a run can be
        evaluated with a config whose optimizer settings differ.
        """
        for step, restored in self._readable(lambda step: self.manager.restore(
                step, args=ocp.args.Composite(
                    state=_restore_args({'params': abstract_params}, partial=True))),
                {'params': abstract_params}):
            yield step, restored['state']['params']

    def _readable(self, restore, abstract_tree) -> Iterator[tuple[int, dict]]:
        """``(step, restore(step))`` for each checkpoint, newest first, skipping the damaged.

        A checkpoint whose files cannot be read (truncated, deleted, not JSON) gets a
        warning naming it; one that reads but does not fit the model raises
        ``CheckpointMismatchError`` (a wrong config, not damage). If checkpoints exist and
        none reads, raises ``NoReadableCheckpointError``.
        """
        steps, readable = self.all_steps(), 0
        for step in reversed(steps):
            path = os.path.join(self.directory, str(step))
            try:
                self.check_compatible(abstract_tree, step)
                restored = restore(step)
            except CheckpointMismatchError:
                raise
            # What a truncated, deleted or garbled file raises (Orbax and TensorStore report
            # bad data as ValueError); other errors (memory, permissions) are not damage.
            except (ValueError, KeyError, FileNotFoundError) as e:
                reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
                if jax.process_count() > 1:  # the processes must agree on one step to restore
                    raise NoReadableCheckpointError(
                        f'Checkpoint {path} is unreadable ({reason}). With several processes '
                        f'it is not skipped automatically: move it aside (mv {path} '
                        f'{path}.unreadable) and run again.') from None
                log.warning('Checkpoint %s is unreadable (%s); skipping it.', path, reason)
                continue
            readable += 1
            yield step, restored
        if steps and not readable:
            raise NoReadableCheckpointError(
                f'None of the {len(steps)} checkpoints in {self.directory} (steps {steps}) can be '
                'read; see the warnings above. Move the directory away to train from scratch.')

    def check_compatible(self, abstract_state, step: int) -> None:
        """Raises ``CheckpointMismatchError`` naming every parameter whose shape differs.

        Restoring a checkpoint of another model size or vocabulary would otherwise fail deep
        inside Orbax (or, worse, broadcast); this lists what differs and why it matters.
        """
        saved = {_name(path): tuple(meta.shape) for path, meta in
                 jax.tree_util.tree_leaves_with_path(self.manager.item_metadata(step)['state'])}
        wanted = {_name(path): tuple(x.shape) for path, x in
                  jax.tree_util.tree_leaves_with_path(abstract_state)}
        differ = [name for name, shape in sorted(wanted.items()) if saved.get(name) != shape]
        extra = [name for name in sorted(saved) if name.startswith('params') and name not in wanted]
        # The optimizer's moments mirror the parameters: name them only when the parameters
        # agree (then the optimizer itself changed).
        params_differ = [name for name in differ if name.startswith('params')]
        problems = [f'  {name}: checkpoint {saved.get(name, "missing")}, model {wanted[name]}'
                    for name in (params_differ or differ)]
        problems += [f'  {name}: in the checkpoint, not in the model' for name in extra]
        if differ and not params_differ and not extra:
            problems.append('  (only the optimizer state differs: was the optimizer changed?)')
        scanned = [not any(name.startswith(('params.encoder.0.', 'params.decoder.0.'))
                           for name in names) for names in (saved, wanted)]
        if problems and scanned[0] != scanned[1]:
            form = {True: 'scanned (model.scan_layers=True)',
                    False: 'unrolled (model.scan_layers=False)'}
            raise CheckpointMismatchError(
                f'Checkpoint {self.directory}/{step} holds {form[scanned[0]]} layers, but this '
                f'model\'s are {form[scanned[1]]}. Set --config.model.scan_layers='
                f'{scanned[0]} (the two compute the same function), or move the parameters '
                'across with transformer.model.convert_layers.')
        if problems:
            raise CheckpointMismatchError(
                f'Checkpoint {self.directory}/{step} does not fit this model '
                f'({len(problems)} parameters differ; was it written with another '
                'model.variant, data.vocab_size or block (model.architecture, norm, ffn, '
                'num_kv_heads, qk_norm, use_bias, positional)?):\n' + '\n'.join(problems[:20])
                + ('\n  ...' if len(problems) > 20 else '')
                + '\nUse a new --workdir, or the config the checkpoint was trained with.')

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
