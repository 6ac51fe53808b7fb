"""Evaluate a trained run: translate a split, print and save its scores.

    python eval.py --config configs/default.py --workdir runs/default [--split test]
    python eval.py --config configs/multi30k.py --workdir runs/m30k --average_last=5

Writes ``hypotheses_<split>.txt`` and ``eval_<split>.json`` into --workdir (and, with
--average_last=N > 1, ``..._<split>_avg<N>`` for the averaged parameters as well).
"""

from absl import app, flags
from ml_collections import config_flags

from transformer import config_lib, evaluate, inference, tasks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The config the run was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('split', None, 'Split to translate (default: config.eval.split).')
flags.DEFINE_integer('average_last', 1, 'Also evaluate the average of the last N checkpoints.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    inference.configure_logging()
    config = FLAGS.config
    split = FLAGS.split or config.eval.split
    try:
        config_lib.validate(config)
        d = config.data
        splits = tasks.load_splits(d.dataset, d.data_dir, manual_dir=d.manual_dir,
                                   **d.builder_kwargs)
        translator = inference.Translator(config, FLAGS.workdir)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'Error: {e}') from None
    if split not in splits:
        raise SystemExit(f'Error: split {split!r} not in {d.dataset}; valid: {sorted(splits)}')
    sources, references = zip(*splits[split])

    runs = [(split, translator)]
    if FLAGS.average_last > 1:
        averaged = inference.Translator(config, FLAGS.workdir, average_last=FLAGS.average_last)
        runs.append((f'{split}_avg{FLAGS.average_last}', averaged))
    for name, t in runs:
        print(f'Translating {len(sources)} sentences of {split} with {t.description}')
        hypotheses = t.translate(list(sources))
        evaluate.score_and_write(FLAGS.workdir, name, t.steps[-1], sources, hypotheses,
                                 references, target_language=d.target_language,
                                 num_samples=config.eval.num_samples,
                                 extra={'checkpoint_steps': t.steps, 'beam_size': t.beam_size,
                                        'length_penalty': t.alpha,
                                        'mbr_samples': t.mbr_samples})


if __name__ == '__main__':
    app.run(main)
