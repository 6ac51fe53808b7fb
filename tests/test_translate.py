"""translate.py: one output line per input line, from stdin or a file; errors say what to do."""

import subprocess

import pytest

from conftest import ROOT, command, run

pytestmark = pytest.mark.xdist_group('trained')  # they share one trained run


def translate(workdir, text, *args):
    return run('translate.py', f'--workdir={workdir}', *args, input=text, check=False)


def test_translate_gives_one_line_per_input_line(trained):
    lines = ['twenty-one', '', 'half past seven', 'one ' * 60 + 'dog', 'ünïcödé ✓ never seen']
    out = translate(trained[0], '\n'.join(lines) + '\n')
    assert out.returncode == 0, out.stderr
    outputs = out.stdout.split('\n')[:-1]
    assert len(outputs) == len(lines)
    assert outputs[1] == ''
    assert 'Line 4 has' in out.stderr and 'translating only its first' in out.stderr


def test_translate_greedy_from_a_file(trained, tmp_path):
    (tmp_path / 'in.txt').write_text('twenty-one\nMay 3, 1999\n')
    out = translate(trained[0], '', '--beam_size=1', f'--input={tmp_path / "in.txt"}',
                    f'--output={tmp_path / "out.txt"}')
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / 'out.txt').read_text().splitlines()) == 2


@pytest.mark.parametrize('workdir,text,message', [
    ('missing', 'x\n', 'No such workdir'),
    ('untrained', 'x\n', 'not a training workdir'),
    (None, '\n \n', 'input is empty'),
])
def test_translate_errors_say_what_to_do(trained, tmp_path, workdir, text, message):
    if workdir == 'untrained':
        (tmp_path / workdir).mkdir()
    path = trained[0] if workdir is None else tmp_path / workdir
    out = translate(path, text)
    assert out.returncode != 0
    assert message in out.stderr


def test_input_that_is_not_utf8_is_translated_with_a_warning_that_counts_the_lines(trained, tmp_path):
    latin1 = 'Café für zwölf\ntwenty-one\nnaïve\n'.encode('latin-1')
    (tmp_path / 'latin1.txt').write_bytes(latin1)
    out = translate(trained[0], '', f'--input={tmp_path / "latin1.txt"}')
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.splitlines()) == 3
    assert f'2 line(s) of {tmp_path / "latin1.txt"} are not valid UTF-8 (the first: line 1)' in out.stderr
    piped = subprocess.run(command('translate.py', f'--workdir={trained[0]}'), cwd=ROOT,
                           input=b'\xff\xfe bad bytes\n', capture_output=True, timeout=300)
    assert piped.returncode == 0, piped.stderr[-2000:]
    assert b'1 line(s) of standard input are not valid UTF-8' in piped.stderr
    assert b'Traceback' not in piped.stderr
