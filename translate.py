"""Translate text with a trained run: from a file, from stdin, or at an interactive prompt.

    python translate.py --workdir runs/multi30k_de_en < sentences.de
    python translate.py --workdir runs/multi30k_de_en --input in.de --output out.en
    python translate.py --workdir runs/default            # a prompt when stdin is a terminal
    python translate.py --workdir runs/a --ensemble=runs/b < sentences.de   # two models

Beam search (config.eval.beam_size, length penalty config.eval.length_penalty) by default.
Each input line gives one output line; an empty line gives an empty line.
"""

import sys

from absl import app, flags

from transformer import inference

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A trained run (holds config.json, tokenizer, checkpoints).')
flags.DEFINE_string('input', None, 'File of sentences, one per line (default: stdin).')
flags.DEFINE_string('output', None, 'Where translations go (default: stdout).')
flags.DEFINE_integer('beam_size', None, 'Beam size (default: the run config; 1 = greedy).')
flags.DEFINE_float('alpha', None, 'GNMT length-penalty exponent (default: the run config).')
flags.DEFINE_integer('average_last', 1, 'Average the parameters of the last N checkpoints.')
flags.DEFINE_list('ensemble', [], 'Other trained workdirs (the same data config) that decode '
                  'together with --workdir, averaging their probabilities at each step.')
flags.mark_flag_as_required('workdir')


def interactive(translator: inference.Translator) -> None:
    print(f'Translating with {translator.description}. Type a sentence; Ctrl-D to quit.',
          file=sys.stderr)
    while True:
        try:
            line = input('> ')
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if line.strip():
            print(translator.translate([line])[0])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    inference.configure_logging()
    try:
        translator = inference.Translator.from_workdir(
            FLAGS.workdir, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha,
            average_last=FLAGS.average_last, ensemble=FLAGS.ensemble)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'Error: {e}') from None

    if FLAGS.input is None and sys.stdin.isatty():
        interactive(translator)
        return
    try:
        with (open(FLAGS.input, encoding='utf-8', errors='replace') if FLAGS.input
              else sys.stdin) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SystemExit(f'Error: cannot read {FLAGS.input}: {e.strerror}') from None
    if not any(line.strip() for line in lines):
        raise SystemExit('Error: the input is empty; give one sentence per line.')
    outputs = translator.translate(lines)
    text = ''.join(out + '\n' for out in outputs)
    if FLAGS.output:
        with open(FLAGS.output, 'w', encoding='utf-8') as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == '__main__':
    app.run(main)
