"""Train a Transformer from a config file.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py:tiny --workdir /tmp/t --config.train.num_steps=50
    python train.py --config configs/wmt14_ende.py:big --workdir /tmp/x --compile_only --topology=v5e:16x16

Running the same command again resumes from the latest checkpoint in --workdir.
"""

from transformer import host_memory

host_memory.keep_freed_memory()  # before any library starts threads that allocate

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from transformer import compile_check, platform_settings, sharding, trainer  # noqa: E402
from transformer.checkpoint import CheckpointMismatchError  # noqa: E402
from transformer.config_lib import ConfigError  # noqa: E402
from transformer.datasets import DatasetError  # noqa: E402
from transformer.sharding import MeshError  # noqa: E402
from transformer.tokenizer import VocabularyError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/default.py.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the tokenizer go.')
flags.DEFINE_bool('compile_only', False, 'Compile the train step for config.mesh from shapes '
                  'alone (no data, no training), print its memory, FLOPs and, for a TPU '
                  'topology, whether it fits and its estimated MFU; --workdir is ignored.')
flags.DEFINE_string('topology', '', 'With --compile_only: compile for this TPU slice instead '
                    'of the local devices, e.g. v5e:16x16, v5p:4x4x4, v4:4x4x4 (needs the '
                    'libtpu package, not a TPU).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    absl_logging.set_verbosity(absl_logging.WARNING)  # the libraries' chatter: warnings only
    logging.getLogger('transformer').setLevel(logging.INFO)
    if FLAGS.topology:  # compiling only: several such processes may share this machine
        os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    sharding.initialize_distributed(FLAGS.config.distributed)
    platform_settings.configure()
    if FLAGS.compile_only:
        try:
            sys.exit(compile_check.print_report(FLAGS.config, FLAGS.topology))
        except (ConfigError, MeshError, compile_check.TopologyError) as e:
            raise SystemExit(f'Error: {e}') from None
    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except trainer.TrainingInterrupted as e:
        print(f'Stopped by {e}', file=sys.stderr)
        sys.exit(128 + e.signum)
    except (ConfigError, MeshError, VocabularyError, FileNotFoundError, DatasetError,
            CheckpointMismatchError, trainer.NonFiniteLossError) as e:
        raise SystemExit(f'Error: {e}') from None
    if result:
        print('final validation: ' + ', '.join(f'{k} {v:.4f}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(main)
