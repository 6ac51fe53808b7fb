"""The base config every experiment starts from: every field there is, with its default.

An experiment's config file calls ``base_config()`` and changes what differs; a field it
does not name keeps the default below. The defaults describe the paper's Transformer
(post-LN, sinusoidal positions, shared embeddings, Adam (0.9, 0.98, 1e-9), the rsqrt
schedule, label smoothing 0.1, beam 4 with length penalty 0.6) on one host's devices.
"""

import ml_collections

from transformer import model as model_lib
from transformer import sharding


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0                       # model initialisation, data order and dropout

    config.data = ml_collections.ConfigDict()
    config.data.dataset = ''              # a name in transformer.datasets.DATASETS
    config.data.data_dir = ''             # TFDS data_dir; '' = TFDS default (~/tensorflow_datasets)
    config.data.manual_dir = ''           # a local copy of a dataset's raw files (offline builds)
    config.data.builder_kwargs = ml_collections.ConfigDict()  # the dataset's own options
    config.data.target_language = 'en'    # for tokenized BLEU
    config.data.vocab_size = 8000         # joint SentencePiece vocabulary
    # The tokenizer case-folds all text (its normalization rule, so train, eval and translate
    # agree); the model's lowercase output is recased (transformer/recase.py).
    config.data.lowercase = False
    # Row lengths in tokens (EOS included); a longer training pair is dropped (and counted).
    config.data.max_source_length = 64
    config.data.max_target_length = 64
    config.data.pack = True               # several pairs per row (segment ids keep them apart)
    # Subword regularization (Kudo, 2018): > 1 draws each training example's pieces from its
    # this many best segmentations, with probability ~ P^alpha, anew each epoch (evaluation
    # and translation always use the best). 1 = off.
    config.data.subword_nbest = 1
    config.data.subword_alpha = 0.5
    # The training stream is cut into this many shards (each packs its own rows; a process
    # reads only its own); 0 = one per process. Fixing it makes the batches the same for
    # any number of processes.
    config.data.input_shards = 0

    config.model = ml_collections.ConfigDict()
    config.model.variant = 'base'         # a row of transformer.model.SIZES
    config.model.dropout_rate = 0.1
    config.model.attention_dropout = 0.0
    config.model.token_dropout = 0.0      # word dropout: P(an input token's embedding is zeroed)
    config.model.positional = 'sinusoidal'  # or 'learned', or 'rope' (rotary, self-attention)
    config.model.max_len = 256            # positions a learned table covers
    config.model.pre_ln = False           # False: post-LN, as in the paper
    # Block variants (the defaults are the paper's block; see transformer/layers.py):
    config.model.norm = 'layernorm'       # or 'rmsnorm'
    config.model.ffn = 'relu'             # 'relu' | 'gelu' | 'swiglu' | 'geglu' (gated: 2/3 width)
    config.model.num_kv_heads = 0         # 0 = num_heads (MHA); 1 = multi-query; else grouped
    config.model.qk_norm = False          # RMSNorm of each head's queries and keys
    config.model.use_bias = True          # biases of the projections and feed-forward layers
    # 'decoder_only': one stack of encoder + decoder layers over "source, target"; prefix_lm:
    # the source attends to itself bidirectionally (else everything is causal).
    config.model.architecture = 'encoder_decoder'
    config.model.prefix_lm = False
    config.model.share_embeddings = True
    config.model.dtype = 'float32'
    config.model.param_dtype = 'float32'
    # Operands of the projection and output-layer matmuls, forward and backward (float32
    # accumulation); '' = model.dtype. 'bfloat16' with float32 dtype is mixed precision.
    config.model.matmul_dtype = ''
    # Accelerator switches (same results, other speed and memory; see transformer/model.py):
    config.model.attention_impl = 'xla'   # 'xla' einsums | 'cudnn' (GPU) | 'splash' (TPU Pallas)
    config.model.remat = 'none'           # recompute in the backward pass: 'none' | 'full' | 'dots'
    config.model.scan_layers = False      # each stack as one scan: compile time flat in depth

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32          # rows per update (per micro-batch with accumulation)
    config.train.grad_accum_steps = 1     # n > 1: n micro-batches of batch_size rows per update
    config.train.num_steps = 100_000
    # > 0: train for this many minutes instead: num_steps becomes the steps that fit, from a
    # step time measured at the start (saved in WORKDIR/budget.json; see trainer.py).
    config.train.time_budget_minutes = 0.0
    config.train.learning_rate = 1e-3     # the peak of the schedule
    config.train.warmup_steps = 4000
    config.train.schedule = 'rsqrt'       # a name in transformer.optim.SCHEDULES
    # Any optax optimizer, by name, with its keyword arguments (the learning rate is the
    # schedule's), e.g. 'adamw' with dict(b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01).
    config.train.optimizer = 'adam'
    config.train.optimizer_kwargs = ml_collections.ConfigDict(dict(b1=0.9, b2=0.98, eps=1e-9))
    config.train.grad_clip_norm = 0.0     # 0 = no clipping
    config.train.label_smoothing = 0.1
    # R-Drop (Liang et al., 2021): > 0 runs each batch twice under different dropout masks
    # and adds this times the symmetric KL between the two predictions to the loss.
    config.train.rdrop_alpha = 0.0
    config.train.log_every = 100
    config.train.eval_every = 1000
    config.train.eval_batches = 10        # validation batches per periodic evaluation
    config.train.checkpoint_every = 1000
    config.train.max_checkpoints = 5
    # A jax.profiler trace of this many steps (0 = none) from step profile_start + 1 (after
    # compilation), written to WORKDIR/profile for TensorBoard's profile plugin or Perfetto.
    config.train.profile_steps = 0
    config.train.profile_start = 10

    # Devices: a ('data', 'fsdp', 'tensor') mesh; one axis may be -1 (the devices left
    # over). The default is pure data parallelism. See transformer/sharding.py.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    # Logical parameter axis -> mesh axis ('' = replicated).
    config.mesh.rules = ml_collections.ConfigDict(sharding.DEFAULT_RULES)

    # Several processes (hosts): jax.distributed, on when an address is set (here or in
    # JAX_COORDINATOR_ADDRESS), or with enabled=True where JAX finds it (TPU pods, SLURM).
    config.distributed = ml_collections.ConfigDict()
    config.distributed.enabled = False
    config.distributed.coordinator_address = ''   # host:port of process 0
    config.distributed.num_processes = 0          # 0 = found by JAX
    config.distributed.process_id = -1            # -1 = found by JAX
    config.distributed.cpu_collectives = 'gloo'   # between CPU processes
    config.distributed.timeout_s = 300            # give up if a peer never arrives

    config.eval = ml_collections.ConfigDict()
    config.eval.split = 'test'
    config.eval.batch_size = 64
    config.eval.max_decode_len = 256      # decoder steps, EOS included
    config.eval.decode_length_offset = 0  # > 0: outputs at most source length + offset
    config.eval.beam_size = 4             # 1 = greedy
    config.eval.length_penalty = 0.6      # GNMT alpha
    config.eval.num_samples = 5           # translations printed beside their references
    # Minimum-Bayes-risk decoding (transformer/mbr.py): > 0 draws this many epsilon-sampled
    # translations per sentence and outputs, of those and the search's output, the one
    # with the highest mean sentence BLEU against the samples. 0 = the search's output.
    config.eval.mbr_samples = 0
    config.eval.mbr_epsilon = 0.02        # sample only tokens with probability >= this
    return config


# Architecture presets, chosen with ',arch=NAME' after any config's argument (e.g.
# configs/multi30k.py:reverse=True,arch=modern). 'modern' is today's block: pre-RMSNorm,
# rotary positions, SwiGLU, grouped-query attention with half as many K/V heads as query
# heads, QK-norm, no biases; 'decoder_only' is that block in one prefix-LM stack.
_MODERN = dict(pre_ln=True, norm='rmsnorm', positional='rope', ffn='swiglu', qk_norm=True,
               use_bias=False)
ARCH_PRESETS = {'paper': {}, 'modern': _MODERN,
                'decoder_only': dict(_MODERN, architecture='decoder_only', prefix_lm=True)}


def pop_arch(arg: str | None) -> tuple[str | None, str]:
    """Splits 'arch=NAME' off a config argument: ('tiny,arch=modern') -> ('tiny', 'modern')."""
    parts = [p for p in (arg or '').split(',') if p]
    arch = [p.partition('=')[2] for p in parts if p.startswith('arch=')]
    if len(arch) > 1 or (arch and arch[0] not in ARCH_PRESETS):
        raise ValueError(f'Bad arch={",".join(arch)}; valid: {", ".join(ARCH_PRESETS)}')
    rest = ','.join(p for p in parts if not p.startswith('arch='))
    return rest or None, arch[0] if arch else 'paper'


def arch_fields(arch: str, variant: str) -> dict:
    """The ``config.model`` fields of ``ARCH_PRESETS[arch]`` for a model of size ``variant``
    (grouped-query attention takes half its query heads)."""
    fields = dict(ARCH_PRESETS[arch])
    if arch != 'paper':
        fields['num_kv_heads'] = max(1, model_lib.SIZES[variant][2] // 2)
    return fields


def apply_arch(config: ml_collections.ConfigDict, arch: str) -> ml_collections.ConfigDict:
    """Sets the ``arch_fields`` of ``config.model`` (call after the variant is set; a later
    override of model.variant keeps the K/V head count, so set --config.model.num_kv_heads
    with it)."""
    config.model.update(arch_fields(arch, config.model.variant))
    return config


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
    """'key=value,key=value' (the part of --config after ':') -> {key: value}.

    Every key must be one of ``defaults``; those not given keep their default. A bad
    argument raises ``ValueError`` naming the valid keys.
    """
    options = dict(defaults)
    for part in (arg or '').split(','):
        if not part:
            continue
        key, sep, value = part.partition('=')
        if not sep or key not in defaults:
            raise ValueError(f'Bad config argument {part!r}; valid: '
                             + ', '.join(f'{k}=VALUE (default {v})' for k, v in defaults.items()))
        options[key] = value
    return options


def is_true(value: str) -> bool:
    """A config argument's 'True' / 'False' (also 1 / 0, yes / no) as a bool."""
    if value.lower() not in ('true', '1', 'yes', 'false', '0', 'no'):
        raise ValueError(f'{value!r} is not a boolean; use True or False')
    return value.lower() in ('true', '1', 'yes')
