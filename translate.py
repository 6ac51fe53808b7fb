"""Translate text with a trained run: from a file, from stdin, or at an interactive prompt.

    python translate.py --workdir runs/multi30k_de_en < sentences.de
    python translate.py --workdir runs/multi30k_de_en --input in.de --output out.en
    python translate.py --workdir runs/default            # a prompt when stdin is a terminal
    python translate.py --workdir runs/a --ensemble=runs/b < sentences.de   # two models
    python translate.py --engine=ct2 --workdir runs/a_ct2 < sentences.de   # CTranslate2

Beam search (config.eval.beam_size, length penalty config.eval.length_penalty) by default.
Each input line gives one output line; an empty line gives an empty line. Input is read as
UTF-8; bytes that are not (e.g. a Latin-1 file) become U+FFFD, with a warning that counts
the lines.
"""

from transformer import host_memory

host_memory.keep_freed_memory()  # before any library starts threads that allocate

import logging  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A trained run (holds config.json, tokenizer, checkpoints).')
flags.DEFINE_string('input', None, 'File of sentences, one per line (default: stdin).')
flags.DEFINE_string('output', None, 'Where translations go (default: stdout).')
flags.DEFINE_integer('beam_size', None, 'Beam size (default: the run config; 1 = greedy).')
flags.DEFINE_float('alpha', None, 'GNMT length-penalty exponent (default: the run config).')
flags.DEFINE_integer('average_last', 1, 'Average the parameters of the last N checkpoints.')
flags.DEFINE_list('ensemble', [], 'Other trained workdirs (the same data config) that decode '
                  'together with --workdir, averaging their probabilities at each step.')
flags.DEFINE_enum('engine', 'jax', ['jax', 'ct2'], "'ct2': --workdir is a run converted by "
                  'python -m transformer.export_ct2, decoded by CTranslate2 without JAX '
                  '(--alpha is then its length penalty, log p / length^alpha).')
flags.DEFINE_string('compute_type', 'default', "--engine=ct2: CTranslate2's weights and "
                    "arithmetic, e.g. 'int8' or 'float32' (default: as converted).")
flags.mark_flag_as_required('workdir')


def decode_lines(raw: bytes, name: str) -> list[str]:
    """The lines of ``raw``, decoded as UTF-8; invalid bytes become U+FFFD with a warning
    that names ``name``, counts the lines and gives the first one's number."""
    lines, bad = [], []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            lines.append(line.decode('utf-8'))
        except UnicodeDecodeError:
            lines.append(line.decode('utf-8', errors='replace'))
            bad.append(number)
    if bad:
        print(f'Warning: {len(bad)} line(s) of {name} are not valid UTF-8 (the first: line '
              f'{bad[0]}); their undecodable bytes were replaced by U+FFFD. Convert the input '
              'first (e.g. iconv -f latin1 -t utf-8) for faithful translations.', file=sys.stderr)
    return lines


def interactive(translator) -> None:
    """A prompt loop; ``translator``: a Translator or CT2Translator."""
    sys.stdin.reconfigure(errors='surrogateescape')  # bad bytes reach us, not a decode error
    print(f'Translating with {translator.description}. Type a sentence; Ctrl-D to quit.',
          file=sys.stderr)
    while True:
        try:
            line = input('> ')
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        line = line.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')
        if line.strip():
            print(translator.translate([line])[0])


def make_translator():
    """The --engine's translator for --workdir (JAX is imported only for --engine=jax)."""
    if FLAGS.engine == 'ct2':
        if FLAGS.ensemble or FLAGS.average_last != 1:
            raise ValueError('--ensemble and --average_last are for --engine=jax; average when '
                             'converting instead (export_ct2 --average_last=N).')
        from transformer.ct2_translator import CT2Translator
        return CT2Translator(FLAGS.workdir, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha,
                             compute_type=FLAGS.compute_type)
    from transformer.translator import Translator
    return Translator.from_workdir(FLAGS.workdir, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha,
                                   average_last=FLAGS.average_last, ensemble=FLAGS.ensemble)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    absl_logging.set_verbosity(absl_logging.WARNING)  # the libraries' chatter: warnings only
    logging.getLogger('transformer').setLevel(logging.INFO)
    try:
        translator = make_translator()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'Error: {e}') from None

    if FLAGS.input is None and sys.stdin.isatty():
        interactive(translator)
        return
    try:
        if FLAGS.input:
            with open(FLAGS.input, 'rb') as f:
                lines = decode_lines(f.read(), FLAGS.input)
        else:
            lines = decode_lines(sys.stdin.buffer.read(), 'standard input')
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
