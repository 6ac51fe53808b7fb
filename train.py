"""Train a Transformer from a config file.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py:tiny --workdir /tmp/t --config.train.num_steps=50

Running the same command again resumes from the latest checkpoint in --workdir.
"""

from transformer import host_memory

host_memory.keep_freed_memory()  # before any library starts threads that allocate

import logging  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from transformer import sharding, trainer  # noqa: E402
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
                  'alone (no data, no training) and print its size; --workdir is ignored.')
flags.mark_flags_as_required(['config', 'workdir'])


def compile_only(config) -> None:
    compiled = trainer.compile_train_step(config)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(f'compiled the train step of model.variant={config.model.variant} for mesh '
          f'data={config.mesh.data} x fsdp={config.mesh.fsdp} x tensor={config.mesh.tensor} '
          f'over {jax.device_count()} devices')
    if cost and 'flops' in cost:
        print(f'  {cost["flops"] / 1e12:.2f} TFLOP per step and device (XLA estimate)')
    if memory is not None:
        print(f'  per device: arguments {memory.argument_size_in_bytes / 2**30:.2f} GiB, '
              f'temporaries {memory.temp_size_in_bytes / 2**30:.2f} GiB')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    absl_logging.set_verbosity(absl_logging.WARNING)  # the libraries' chatter: warnings only
    logging.getLogger('transformer').setLevel(logging.INFO)
    sharding.initialize_distributed(FLAGS.config.distributed)
    if FLAGS.compile_only:
        try:
            return compile_only(FLAGS.config)
        except (ConfigError, MeshError) as e:
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
