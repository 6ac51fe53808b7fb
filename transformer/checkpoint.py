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


class Checkpointer:
    """Saves and restores (TrainState, data state) pairs by step."""

    def __init__(self, directory: str, max_to_keep: int | None = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=('state', 'data'))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict | None = None) -> None:
        """Writes checkpoint ``step`` (waits for the previous asynchronous write first)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})),
            force=True)

    def restore(self, abstract_state, step: int | None = None):
        """Restores ``step`` (default: latest) into the structure of ``abstract_state``.

        Returns (state, data_state).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'No checkpoint in {self.directory}')
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        return restored['state'], restored['data']

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
