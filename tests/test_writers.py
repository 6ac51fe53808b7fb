"""A run's metric files (transformer/writers.py): JSON lines and TensorBoard events."""

import json

from transformer import writers


def test_records_are_appended_and_read_back_without_a_line_still_being_written(tmp_path):
    writer = writers.MetricWriter(str(tmp_path))
    writer.write(5, 'train', {'loss': 2.5, 'accuracy': 10})
    writer.write(10, 'validation', {'loss': 2.0})
    writer.close()
    records = writers.read_metrics(str(tmp_path))
    assert [(r['step'], r['split'], r['loss']) for r in records] == [(5, 'train', 2.5),
                                                                    (10, 'validation', 2.0)]
    assert isinstance(records[0]['accuracy'], float) and 'time' in records[0]
    assert list((tmp_path / 'tensorboard').iterdir())
    with open(tmp_path / 'metrics.jsonl', 'a') as f:
        f.write(json.dumps({'step': 15, 'split': 'train'})[:10])  # a write in progress
    assert len(writers.read_metrics(str(tmp_path))) == 2


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = writers.MetricWriter(str(tmp_path / 'run'), enabled=False)
    writer.write(1, 'train', {'loss': 1.0})
    writer.close()
    assert not (tmp_path / 'run').exists()
    assert writers.read_metrics(str(tmp_path / 'run')) == []
