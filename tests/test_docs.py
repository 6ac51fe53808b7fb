"""The blog post docs/transformer-networks.md: its code runs, prints what it shows, links
resolve, and docs/make_figures.py draws its figures from a trained run.

Every ```python block runs in order in one namespace (as a reader pasting them into one
interpreter would). A ```text block right after a python block is the output the post
claims; it must equal what the block prints, and a block that prints must show its output.
"""

import contextlib
import io
import os
import re

import pytest

from conftest import ROOT, run

POST = os.path.join(ROOT, 'docs', 'transformer-networks.md')
FENCE = re.compile(r'^```(\w*)\n(.*?)^```\s*$', re.M | re.S)
LINK = re.compile(r'!?\[([^\]]*)\]\(([^)\s]+)\)')


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def code_blocks(text):
    """[(python source, expected output or None, line number)] in document order."""
    blocks, fences = [], list(FENCE.finditer(text))
    for i, fence in enumerate(fences):
        if fence.group(1) != 'python':
            continue
        expected = None
        following = fences[i + 1] if i + 1 < len(fences) else None
        if (following is not None and following.group(1) == 'text'
                and not text[fence.end():following.start()].strip()):
            expected = following.group(2)
        blocks.append((fence.group(2), expected, text.count('\n', 0, fence.start()) + 1))
    return blocks


def github_anchor(heading):
    """The id GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(text):
    without_code = FENCE.sub('', text)
    return {github_anchor(h) for h in re.findall(r'^#+ (.+)$', without_code, re.M)}


def test_every_python_block_runs_and_prints_what_the_post_shows():
    blocks = code_blocks(read(POST))
    assert len(blocks) >= 15
    namespace = {'__name__': '__post__'}
    for source, expected, line in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, f'{POST}:{line}', 'exec'), namespace)  # noqa: S102
        printed = out.getvalue()
        if expected is None:
            assert not printed, f'the block at line {line} prints output the post does not show:\n{printed}'
        else:
            got = [r.rstrip() for r in printed.rstrip('\n').split('\n')]
            want = [r.rstrip() for r in expected.rstrip('\n').split('\n')]
            assert got == want, f'the block at line {line} printed:\n{printed}'


@pytest.mark.parametrize('path', ['docs/transformer-networks.md', 'README.md'])
def test_relative_links_and_images_resolve(path):
    text = read(os.path.join(ROOT, path))
    base = os.path.dirname(os.path.join(ROOT, path))
    checked = 0
    for _label, target in LINK.findall(FENCE.sub('', text)):
        if target.startswith(('http://', 'https://')):
            continue
        file, _, anchor = target.partition('#')
        file_path = os.path.normpath(os.path.join(base, file)) if file else os.path.join(ROOT, path)
        assert os.path.exists(file_path), f'{path}: link target {target} does not exist'
        if anchor and file_path.endswith('.md'):
            assert anchor in anchors(read(file_path)), f'{path}: no heading for #{anchor}'
        checked += 1
    assert checked >= (10 if path.startswith('docs') else 1)


DIAGRAMS = ('architecture.png', 'attention_flow.png', 'masks.png', 'label_smoothing.png',
            'kv_cache.png')  # docs/diagrams.py, drawn without a trained run


def test_every_figure_has_alt_text_and_a_caption():
    text = read(POST)
    images = re.findall(r'!\[([^\]]*)\]\(([^)]+)\)\n\n(\*[^\n].*?\*)\n', text, re.S)
    names = {os.path.basename(p) for _, p, _ in images}
    assert names == {'positional_encoding.png', 'learning_rate.png', 'cross_attention.png',
                     *DIAGRAMS}
    for alt, path, caption in images:
        assert len(alt) > 40, f'{path}: alt text too short'
        assert 'make_figures.py' in caption, f'{path}: caption does not say how it was made'


def test_readme_links_to_the_post():
    assert '(docs/transformer-networks.md)' in read(os.path.join(ROOT, 'README.md'))


@pytest.mark.xdist_group('trained')
def test_make_figures_draws_every_figure_from_a_trained_run(trained, tmp_path):
    out = run('docs/make_figures.py', '--default_workdir', str(trained[0]), '--out', str(tmp_path))
    names = {'positional_encoding.png', 'learning_rate.png', 'cross_attention.png', *DIAGRAMS}
    assert {p.name for p in tmp_path.iterdir()} == names, out.stdout
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG'
    missing = run('docs/make_figures.py', '--default_workdir', str(tmp_path / 'none'),
                  '--out', str(tmp_path / 'partial'), check=False)
    assert missing.returncode == 1 and 'train it first' in missing.stderr
    assert sorted(os.listdir(tmp_path / 'partial')) == sorted(
        ['learning_rate.png', 'positional_encoding.png', *DIAGRAMS])
