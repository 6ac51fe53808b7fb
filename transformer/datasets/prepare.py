"""Preparing a TFDS dataset exactly once, however many processes ask for it at once."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the builders import TFDS themselves; this module stays light
    import tensorflow_datasets as tfds


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are neither prepared nor obtainable; the message says how to fix it."""


class DatasetError(ValueError):
    """A dataset's data cannot be used as it is; the message says what is wrong with it."""


@contextlib.contextmanager
def exclusive(data_dir: str, name: str):
    """Holds an exclusive lock on ``data_dir/.name.lock`` while the block runs.

    The lock is the kernel's (``flock``): it is released when the process exits, however it
    exits, so a killed preparation never blocks the next one.
    """
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f'.{name}.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepared(make_builder: Callable[[], tfds.core.DatasetBuilder],
             prepare: Callable[[tfds.core.DatasetBuilder], None]) -> tfds.core.DatasetBuilder:
    """A builder whose dataset is prepared on disk, calling ``prepare(builder)`` if it is not.

    Processes started at once on one data_dir (an ensemble's members, a parallel sweep, the
    hosts of a pod on a shared filesystem) queue on a lock in the data_dir: the first
    prepares the dataset, the others then find it prepared and only read it. Where the lock
    does not reach across hosts (``flock`` on some network filesystems, e.g. some NFS and
    Lustre setups or object-store mounts), two hosts may both prepare; TFDS then refuses to
    rename the second copy into place, and that host reads the first one's.
    """
    builder = make_builder()
    if builder.is_prepared():
        return builder
    with exclusive(builder.data_dir_root, builder.name):
        builder = make_builder()  # anew: the dataset may have been prepared while we waited
        if not builder.is_prepared():
            try:
                prepare(builder)
            except FileExistsError:  # another host, outside the lock's reach, finished first
                builder = make_builder()
                if not builder.is_prepared():
                    raise
    return builder
