"""Evaluate the latest checkpoint of a run: translate a split, print and save its scores.

    python eval.py --config configs/default.py --workdir runs/default [--split test]

Writes ``hypotheses_<split>.txt`` and ``eval_<split>.json`` into --workdir.
"""

from absl import app, flags
from ml_collections import config_flags

from transformer import evaluate, trainer
from transformer.config_lib import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The config the run was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('split', None, 'Split to translate (default: config.eval.split).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    trainer.configure_logging()
    config = FLAGS.config
    split = FLAGS.split or config.eval.split
    try:
        run = trainer.setup(config, FLAGS.workdir, train_tokenizer=False)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f'Error: {e}') from None
    if split not in run.splits:
        raise SystemExit(f'Error: split {split!r} not in the dataset; valid: {sorted(run.splits)}')
    step = run.checkpointer.latest_step()
    if step is None:
        raise SystemExit(f'Error: no checkpoint in {run.checkpointer.directory}; train first:\n'
                         f'  python train.py --config ... --workdir {FLAGS.workdir}')
    state, _ = run.checkpointer.restore(run.state, step)
    translate = evaluate.make_translator(run.graphdef, max_decode_len=config.eval.max_decode_len)
    pairs = run.splits[split]
    hypotheses = evaluate.translate_pairs(translate, state.params, pairs, run.tokenizer,
                                          run.lengths, config.eval.batch_size)
    sources, references = [p[0] for p in pairs], [p[1] for p in pairs]
    evaluate.score_and_write(run.workdir, split, step, sources, hypotheses, references,
                             config.eval.num_samples)


if __name__ == '__main__':
    app.run(main)
