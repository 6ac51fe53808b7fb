"""Train a Transformer from a config file.

    python train.py --config configs/default.py --workdir runs/default
    python train.py --config configs/default.py:tiny --workdir /tmp/t --config.train.num_steps=50

Running the same command again resumes from the latest checkpoint in --workdir.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from transformer import inference, sharding, trainer
from transformer.checkpoint import CheckpointMismatchError
from transformer.config_lib import ConfigError
from transformer.data import VocabularyError
from transformer.sharding import MeshError

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
    inference.configure_logging()
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
    except (ConfigError, MeshError, VocabularyError, FileNotFoundError, CheckpointMismatchError,
            trainer.NonFiniteLossError) as e:
        raise SystemExit(f'Error: {e}') from None
    if result:
        print('final validation: ' + ', '.join(f'{k} {v:.4f}' for k, v in result.items()))


if __name__ == '__main__':
    app.run(main)
