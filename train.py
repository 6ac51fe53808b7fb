"""Train a Transformer from a config file.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py:tiny --workdir /tmp/t --config.train.num_steps=50

Running the same command again resumes from the latest checkpoint in --workdir.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from transformer import inference, trainer
from transformer.checkpoint import CheckpointMismatchError
from transformer.config_lib import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/default.py.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the tokenizer go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    inference.configure_logging()
    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except trainer.TrainingInterrupted as e:
        print(f'Stopped by {e}', file=sys.stderr)
        sys.exit(128 + e.signum)
    except (ConfigError, FileNotFoundError, CheckpointMismatchError,
            trainer.NonFiniteLossError) as e:
        raise SystemExit(f'Error: {e}') from None
    if result:
        print('final validation: ' + ', '.join(f'{k} {v:.4f}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(main)
