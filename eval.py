"""Evaluate a trained run: translate a split, print and save its scores.

    python eval.py --config configs/default.py --workdir runs/default [--split test]
    python eval.py --config configs/multi30k.py --workdir runs/m30k --average_last=5
    python eval.py --config configs/multi30k.py --workdir runs/m30k --tune_length_penalty=0.6,1,1.4

Writes ``hypotheses_<split>.txt`` and ``eval_<split>.json`` into --workdir (and, with
--average_last=N > 1, ``..._<split>_avg<N>`` for the averaged parameters as well).

With --ensemble=DIR2[,DIR3...] the runs in --workdir and DIR2... decode together (each step
averages the models' probabilities; each run's checkpoints are averaged as --average_last
says); the files are then named ``..._<split>_ens<n>`` in --workdir:

    python eval.py --config configs/multi30k.py --workdir runs/a --ensemble=runs/b --average_last=5

With --tune_length_penalty each model first translates --tune_split (validation) with every
listed GNMT alpha and then translates --split with the alpha whose tokenized lowercased BLEU
was highest there (the first on a tie), so the test split never chooses its own setting.
"""

from transformer import host_memory

host_memory.keep_freed_memory()  # before any library starts threads that allocate

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from transformer import config_lib, datasets, metrics  # noqa: E402
from transformer.translator import Translator  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The config the run was trained with.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'The trained run.')
flags.DEFINE_string('split', None, 'Split to translate (default: config.eval.split).')
flags.DEFINE_integer('average_last', 1, 'Also evaluate the average of the last N checkpoints.')
flags.DEFINE_list('tune_length_penalty', [], 'Candidate length penalties (GNMT alpha), '
                  'e.g. 0.6,1,1.4: the best on --tune_split is used (default: config.eval).')
flags.DEFINE_list('ensemble', [], 'Other trained workdirs (the same data config) that decode '
                  'together with --workdir, averaging their probabilities at each step.')
flags.DEFINE_string('tune_split', 'validation', 'The split --tune_length_penalty scores on.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_alphas(values: list[str]) -> list[float]:
    """'--tune_length_penalty' values -> floats >= 0, or a ValueError naming the bad one."""
    alphas = []
    for value in values:
        try:
            alpha = float(value)
        except ValueError:
            alpha = -1.0
        if not alpha >= 0:
            raise ValueError(f'--tune_length_penalty: {value!r} is not a number >= 0; give a '
                             'comma-separated list such as 0.6,1,1.4')
        alphas.append(alpha)
    return alphas


def tune_length_penalty(translator: Translator, alphas: list[float], pairs,
                        language: str) -> dict[str, float]:
    """Translates ``pairs`` with each alpha and leaves ``translator`` on the best one.

    Returns {alpha: tokenized lowercased BLEU} in the order tried.
    """
    sources, references = zip(*pairs)
    scores = {}
    for alpha in alphas:
        translator.set_length_penalty(alpha)
        hypotheses = translator.translate(list(sources))
        scores[alpha] = metrics.tokenized_bleu(hypotheses, references, language)
        print(f'  alpha {alpha:g}: tokenized lowercased BLEU {scores[alpha]:.2f}')
    best = max(scores, key=scores.get)  # max keeps the first of equal scores
    translator.set_length_penalty(best)
    print(f'  -> alpha {best:g}')
    return {f'{alpha:g}': round(score, 2) for alpha, score in scores.items()}


def ensemble_info(translator: Translator) -> dict:
    """{'ensemble': [{workdir, checkpoint_steps}, ...]} for an ensemble, else {}."""
    if len(translator.members) == 1:
        return {}
    return {'ensemble': [{'workdir': w, 'checkpoint_steps': s}
                         for w, s in zip(translator.members, translator.member_steps)]}


def score_and_write(workdir: str, name: str, step: int, sources: list[str],
                    hypotheses: list[str], references: list[str], *, target_language: str,
                    num_samples: int = 5, extra: dict | None = None) -> dict:
    """Scores hypotheses, writes ``hypotheses_<name>.txt`` and ``eval_<name>.json``.

    Returns the scores (also printed, with sacreBLEU's signature and sample translations):
    sacreBLEU (cased, detokenized), the tokenized lowercased BLEU that published Multi30k
    results use, chrF and exact match.
    """
    score, signature = metrics.bleu(hypotheses, references)
    tok_score = metrics.tokenized_bleu(hypotheses, references, target_language)
    result = {'name': name, 'step': step, 'num_examples': len(references),
              'sacrebleu': round(score, 2), 'sacrebleu_signature': signature,
              'tokenized_lowercased_bleu': round(tok_score, 2),
              'chrf': round(metrics.chrf(hypotheses, references), 2),
              'exact_match': round(metrics.exact_match(hypotheses, references), 2),
              **(extra or {})}
    with open(os.path.join(workdir, f'hypotheses_{name}.txt'), 'w') as f:
        f.writelines(h + '\n' for h in hypotheses)
    with open(os.path.join(workdir, f'eval_{name}.json'), 'w') as f:
        json.dump(result, f, indent=2)
    print(f'{name} (step {step}): sacreBLEU {score:.2f} ({signature}); tokenized lowercased '
          f'BLEU {tok_score:.2f}; chrF {result["chrf"]:.2f}; exact match '
          f'{result["exact_match"]:.2f}% of {len(references)}')
    for src, hyp, ref in list(zip(sources, hypotheses, references))[:num_samples]:
        mark = '=' if hyp.strip() == ref.strip() else 'x'
        print(f'  [{mark}] {src}\n      hyp: {hyp}\n      ref: {ref}')
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    absl_logging.set_verbosity(absl_logging.WARNING)  # the libraries' chatter: warnings only
    logging.getLogger('transformer').setLevel(logging.INFO)
    config = FLAGS.config
    split = FLAGS.split or config.eval.split
    d = config.data
    try:
        config_lib.validate(config)
        alphas = parse_alphas(FLAGS.tune_length_penalty)
        if alphas and config.eval.beam_size == 1:
            raise ValueError('--tune_length_penalty needs beam search, but config.eval.beam_size=1 '
                             '(greedy decoding has no length penalty).')
        wanted = [split] + ([FLAGS.tune_split] if alphas and FLAGS.tune_split != split else [])
        splits = datasets.load_splits(d.dataset, d.data_dir, wanted, manual_dir=d.manual_dir,
                                      **d.builder_kwargs)
        translator = Translator(config, FLAGS.workdir, ensemble=FLAGS.ensemble)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f'Error: {e}') from None
    if alphas and FLAGS.tune_split == split:
        print(f'Warning: tuning the length penalty on {split}, the split being scored: '
              'its score is then optimistic. Score another split (--split).')
    sources, references = zip(*splits[split])

    name = f'{split}_ens{len(translator.members)}' if FLAGS.ensemble else split
    runs = [(name, translator)]
    if FLAGS.average_last > 1:
        averaged = Translator(config, FLAGS.workdir, average_last=FLAGS.average_last,
                              ensemble=FLAGS.ensemble)
        runs.append((f'{name}_avg{FLAGS.average_last}', averaged))
    for name, t in runs:
        tuning = {}
        if alphas:
            print(f'Choosing the length penalty on {FLAGS.tune_split} for {t.description}')
            tuning = {'length_penalty_tuning': {
                'split': FLAGS.tune_split, 'tokenized_lowercased_bleu': tune_length_penalty(
                    t, alphas, splits[FLAGS.tune_split], d.target_language)}}
        print(f'Translating {len(sources)} sentences of {split} with {t.description}')
        hypotheses = t.translate(list(sources))
        score_and_write(FLAGS.workdir, name, t.steps[-1], sources, hypotheses, references,
                        target_language=d.target_language, num_samples=config.eval.num_samples,
                        extra={'checkpoint_steps': t.steps, **ensemble_info(t),
                               'beam_size': t.beam_size, 'length_penalty': t.alpha,
                               'decode_tokens_per_sec': round(t.speed.tokens_per_sec, 1),
                               'kv_cache_bytes_per_token': t.kv_cache_bytes_per_token(),
                               'mbr_samples': t.mbr.num_samples if t.mbr else 0, **tuning})


if __name__ == '__main__':
    app.run(main)
