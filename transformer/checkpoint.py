"""Orbax checkpoints of the train state and the data-iterator state, with auto-resume.

Each checkpoint is a step directory under ``workdir/checkpoints`` holding two items:
``state`` (the ``TrainState`` arrays, no pickle) and ``data`` (the grain iterator state as
JSON). Orbax writes to a temporary directory and renames it when complete, so a crash in
the middle of a write leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def _restore_args(abstract_tree, partial: bool = False) -> ocp.args.PyTreeRestore:
    """Orbax arguments that restore arrays with the shapes, dtypes and shardings of the tree."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_tree)
    return ocp.args.PyTreeRestore(
        item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=partial)


class CheckpointMismatchError(ValueError):
    """The checkpoint's parameters do not have the shapes the model expects."""


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

    def restore(self, abstract_state, step: int | None = None):
        """Restores ``step`` (default: latest) into the structure of ``abstract_state``.

        Returns (state, data_state).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'No checkpoint in {self.directory}')
        self.check_compatible(abstract_state, step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=_restore_args(abstract_state), data=ocp.args.JsonRestore()))
        return restored['state'], restored['data']

    def restore_params(self, abstract_params, step: int | None = None):
        """Restores only the parameters of checkpoint ``step`` (for inference).

        The optimizer state is neither read nor required to match, so a run can be
        evaluated with a config whose optimizer settings differ.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'No checkpoint in {self.directory}')
        self.check_compatible({'params': abstract_params}, step)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=_restore_args({'params': abstract_params}, partial=True)))
        return restored['state']['params']

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
        if problems:
            raise CheckpointMismatchError(
                f'Checkpoint {self.directory}/{step} does not fit this model '
                f'({len(problems)} parameters differ; was it written with another '
                'model.variant or data.vocab_size?):\n' + '\n'.join(problems[:20])
                + ('\n  ...' if len(problems) > 20 else '')
                + '\nUse a new --workdir, or the config the checkpoint was trained with.')

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
