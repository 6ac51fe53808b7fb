"""WMT14 English -> German, the paper's setting (Vaswani et al., 2017): variant base or big.

    tfds build wmt14_translate/de-en --file_format=array_record     # once, with network
    python train.py --config configs/wmt14_ende.py:base --workdir runs/wmt14_base
    python eval.py --config configs/wmt14_ende.py:base --workdir runs/wmt14_base --average_last=5

Every update sees ~25k source + ~25k target tokens (the paper's batch): 96 packed rows of 256
tokens, as batch_size x grad_accum_steps (one GPU: 32 x 3). An 8-GPU box: add
--config.train.batch_size=96 --config.train.grad_accum_steps=1 (for big, also
--config.mesh.data=4 --config.mesh.fsdp=2). A TPU pod slice: the same command on every host,
with --config.distributed.enabled=True and a workdir and data_dir all hosts see. Check first,
on any machine, that it compiles and fits the slice: python train.py ... --compile_only
--topology=v5e:16x16 --config.train.batch_size=1024 --config.train.grad_accum_steps=1
(the README's table).

Hardware and result: not yet run here (a 2-core CPU cannot train this). Paper: newstest2014
tokenized BLEU 27.3 (base, 100k steps) / 28.4 (big, 300k). The tests train it on mock data
and compile base for an 8-device mesh. Architecture presets: configs/wmt14_ende.py:big,arch=modern
or :base,arch=decoder_only (configs/common.py ARCH_PRESETS).
"""

import ml_collections

from configs import common
from transformer.model import SIZES

# The paper's hyperparameters (section 5) per model size: (dropout, steps). The peak
# learning rate of the schedule d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) is
# (d_model * warmup)^-0.5.
RECIPES = {'base': (0.1, 100_000), 'big': (0.3, 300_000)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg, arch = common.pop_arch(arg)
    variant = arg or 'base'
    if variant not in RECIPES:
        raise ValueError(f'Unknown variant {variant!r}; valid: {sorted(RECIPES)}')
    dropout, steps = RECIPES[variant]

    config = common.base_config()
    config.data.dataset = 'wmt14_translate'
    config.data.builder_kwargs = ml_collections.ConfigDict(dict(reverse=False))
    config.data.target_language = 'de'
    config.data.vocab_size = 37000        # shared source-target vocabulary (section 5.1)
    config.data.max_source_length = 256   # packed rows; longer pairs are dropped (counted)
    config.data.max_target_length = 256

    config.model.variant = variant
    config.model.dropout_rate = dropout
    config.model.share_embeddings = True  # section 3.4

    config.train.batch_size = 32          # rows of 256 tokens per micro-batch
    config.train.grad_accum_steps = 3     # 3 x 32 x 256 = 24.6k tokens per side per update
    config.train.num_steps = steps
    config.train.warmup_steps = 4000
    d_model = SIZES[variant][0]
    config.train.learning_rate = (d_model * 4000) ** -0.5
    config.train.label_smoothing = 0.1
    config.train.log_every = 100
    config.train.eval_every = 5000
    config.train.eval_batches = 20
    config.train.checkpoint_every = 2000
    config.train.max_checkpoints = 5

    config.eval.split = 'test'            # newstest2014
    config.eval.batch_size = 64
    config.eval.max_decode_len = 306
    config.eval.decode_length_offset = 50  # output length <= input length + 50 (section 6.1)
    config.eval.beam_size = 4
    config.eval.length_penalty = 0.6
    return common.apply_arch(config, arch)
