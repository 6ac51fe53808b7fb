"""Multi30k task 1 on a 2-core CPU: German -> English; English -> German with reverse=True.

    python train.py --config configs/multi30k.py --workdir runs/m30k_de_en \\
        --config.data.manual_dir=PATH/TO/multi30k        # omit to download (sha256-checked)
    python eval.py --config configs/multi30k.py --workdir runs/m30k_de_en --average_last=5 \\
        --config.data.manual_dir=PATH/TO/multi30k

English -> German: the same commands with configs/multi30k.py:reverse=True. The two-model
ensemble (reverse=True,ensemble=2) trains seeds 2 and 3 side by side, one core each, then
decodes with both:

    for i in 2 3; do taskset -c $((i - 2)) python train.py \
        --config configs/multi30k.py:reverse=True,ensemble=2 --workdir runs/m30k_en_de_$i \
        --config.seed=$i --config.data.manual_dir=PATH/TO/multi30k & done; wait
    python eval.py --config configs/multi30k.py:reverse=True,ensemble=2 \
        --workdir runs/m30k_en_de_2 --ensemble=runs/m30k_en_de_3 --average_last=5 \
        --config.data.manual_dir=PATH/TO/multi30k

Results on test2016, beam 4, tokenized lowercased BLEU / sacreBLEU (last checkpoint):
  de->en               53 min 41 s, 2-core AMD EPYC without AVX-512       40.83 / 40.55
  en->de               48 min 41 s, 2-core AMD EPYC with AVX-512          39.72 / 38.67
  en->de, ensemble=2   2 x 59 min side by side, same host, last 5 avg.    41.09 / 40.01
A slower host fits fewer steps in the hour (--config.train.num_steps). History, seeds and
what did not pay: docs/experiments.md. Add ,arch=modern (today's block) or ,arch=decoder_only
(one prefix-LM stack) to the argument for the same recipe with another architecture
(configs/common.py ARCH_PRESETS).

budget=MINUTES trains any architecture for that many minutes (its step count follows
from its measured step time), and its sweep is the architecture comparison: the three presets
in both directions with seeds 0 and 1, and each single switch on en->de, two trials side by
side on a 2-core CPU (6 minutes each: 19 trials in about 2 hours; table and findings in
docs/experiments.md, "Architectures on one time budget"):

    python sweep.py --config configs/multi30k.py:budget=6 --workdir runs/compare --parallel 2 \\
        --cores_per_trial 1 --extra=data.manual_dir=PATH/TO/multi30k \\
        --eval_flags='--split=test2016 --tune_length_penalty=0.6,1'
    python docs/variants_table.py runs/compare
"""

import ml_collections

from configs import common
from transformer import hparam_search


def _options(arg: str | None) -> tuple[dict, str]:
    """The config argument's options (reverse, ensemble, budget) and its arch preset."""
    arg, arch = common.pop_arch(arg)
    return common.parse_arg(arg, reverse='False', ensemble='1', budget='0'), arch


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options, arch = _options(arg)
    reverse = common.is_true(options['reverse'])
    ensemble = options['ensemble']
    if ensemble not in ('1', '2') or (ensemble == '2' and not reverse):
        raise ValueError(f'ensemble={ensemble}: the recipes are ensemble=1 (one model on all '
                         'cores) and, for reverse=True, ensemble=2 (each member on one core)')
    budget = float(options['budget'])
    if budget < 0 or (budget and ensemble != '1'):
        raise ValueError(f'budget={options["budget"]}: minutes of training (> 0) for one model')

    config = common.base_config()
    config.data.dataset = 'multi30k'
    config.data.builder_kwargs = ml_collections.ConfigDict(dict(reverse=reverse))
    config.data.target_language = 'de' if reverse else 'en'
    config.data.vocab_size = 8000         # joint German-English SentencePiece vocabulary
    config.data.max_source_length = 64    # packed rows; ~4 sentence pairs each
    config.data.max_target_length = 64

    config.model.variant = 'small'
    config.model.dropout_rate = 0.1

    config.train.batch_size = 32          # rows of 64 + 64 tokens: ~125 sentence pairs
    config.train.num_steps = 2300         # ~9.5 epochs: an hour on a 2-core CPU
    config.train.learning_rate = 1.5e-3
    config.train.warmup_steps = 400
    if reverse:  # more, smaller updates: the hour's best on this direction
        config.data.vocab_size = 4000     # a smaller output layer: ~23% less time per step
        config.data.lowercase = True      # as the published systems; output is recased
        config.model.dropout_rate = 0.25
        config.model.matmul_dtype = 'bfloat16'  # mixed precision: ~8% less time per step
        config.train.batch_size = 16
        config.train.num_steps = 14000
        config.train.learning_rate = 1.1e-3   # 1.5e-3 / sqrt(2) for half the batch
        config.train.warmup_steps = 800
    if ensemble == '2':  # each member gets one core, so half the steps fit the hour
        config.model.dropout_rate = 0.15
        config.train.num_steps = 7500
    config.train.schedule = 'linear'      # a fixed budget: decay to zero at the last step
    # Counted in rows, so they follow a --config.train.batch_size override (a reference,
    # resolved when read).
    rows = config.train.get_ref('batch_size')
    config.train.log_every = 50
    config.train.eval_every = 500 * 32 // rows
    config.train.eval_batches = 5 * 32 // rows    # 160 validation rows
    config.train.checkpoint_every = 100 * 32 // rows
    config.train.max_checkpoints = 5      # the last 5 are averaged by eval.py --average_last=5

    config.eval.split = 'test2016'
    config.eval.batch_size = 100
    config.eval.max_decode_len = 80
    config.eval.decode_length_offset = 20
    config.eval.beam_size = 4
    config.eval.length_penalty = 1.0 if reverse else 0.6
    if budget:  # the architecture comparison: one recipe for every variant and direction
        _comparison_recipe(config, budget)
    return common.apply_arch(config, arch)


def _comparison_recipe(config: ml_collections.ConfigDict, minutes: float) -> None:
    """budget=MINUTES: train for that long on one core, whatever the architecture (its step
    count follows from its measured step time), with one recipe for both directions: the
    English -> German data settings and settings chosen before any run, not tuned per
    variant (a short run: less dropout, a shorter warm-up)."""
    config.data.vocab_size = 4000
    config.data.lowercase = True
    config.model.matmul_dtype = 'bfloat16'
    config.model.dropout_rate = 0.1
    config.train.batch_size = 16
    config.train.learning_rate = 1.1e-3
    config.train.warmup_steps = 200
    config.train.time_budget_minutes = minutes
    config.train.num_steps = 100_000      # replaced by the steps that fit the budget
    config.eval.length_penalty = 0.6      # eval.py --tune_length_penalty chooses on validation


# The comparison's single switches, each on the paper's block (English -> German, one seed),
# and decoder-only without the bidirectional source (on the decoder-only preset).
SINGLE_SWITCHES = ({'model.norm': 'rmsnorm'}, {'model.positional': 'rope'},
                   {'model.ffn': 'swiglu'}, {'model.num_kv_heads': 2}, {'model.qk_norm': True},
                   {'model.use_bias': False})


def comparison_trials() -> list[dict]:
    """The architecture comparison (budget=MINUTES): the three presets in both directions with
    seeds 0 and 1, then each single switch on English -> German with seed 0."""
    directions = {'en_de': {'data.builder_kwargs.reverse': True, 'data.target_language': 'de'},
                  'de_en': {'data.builder_kwargs.reverse': False, 'data.target_language': 'en'}}
    arch = {name: {f'model.{k}': v for k, v in common.arch_fields(name, 'small').items()}
            for name in common.ARCH_PRESETS}
    trials = [{**direction, 'seed': seed, **arch[name]} for seed in (0, 1)
              for direction in directions.values() for name in arch]
    en_de = {**directions['en_de'], 'seed': 0}
    trials += [{**en_de, **switch} for switch in SINGLE_SWITCHES]
    trials.append({**en_de, **arch['decoder_only'], 'model.prefix_lm': False})
    return trials


def get_sweep(arg: str | None = None) -> list[dict]:
    """With budget=MINUTES: the architecture comparison (``comparison_trials``); otherwise 8
    seeded random trials of learning rate, dropout and label smoothing."""
    if float(_options(arg)[0]['budget']):
        return comparison_trials()
    return hparam_search.random_search(
        8, seed=0, **{'train.learning_rate': hparam_search.LogUniform(5e-4, 3e-3),
                      'model.dropout_rate': hparam_search.Uniform(0.05, 0.3),
                      'train.label_smoothing': hparam_search.Choice((0.0, 0.1))})
