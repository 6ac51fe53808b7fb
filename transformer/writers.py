"""A run's metric files: ``metrics.jsonl`` (one JSON record per line) and TensorBoard events."""

from __future__ import annotations

import json
import os
import time


class MetricWriter:
    """Appends ``{'step': s, 'split': ..., name: value}`` to ``metrics.jsonl`` and TensorBoard.

    TensorBoard event files come from tensorboardX, which does not need TensorFlow.
    ``enabled=False`` (non-zero processes of a multi-host run) writes nothing.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, 'metrics.jsonl')
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # heavy import, only where needed
            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {'step': int(step), 'split': split, 'time': round(time.time(), 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        for name, value in scalars.items():
            self._tb.add_scalar(f'{split}/{name}', float(value), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl``, oldest first.

    Safe to call while the run writes: a last line still being written is left out.
    """
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if not line.endswith('\n'):  # the line being written right now
                break
            if line.strip():
                records.append(json.loads(line))
    return records
