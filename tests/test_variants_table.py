"""docs/variants_table.py: the architecture comparison's rows from a sweep directory."""

import json
import os
import sys

import pytest

from conftest import ROOT, load_config

sys.path.insert(0, os.path.join(ROOT, 'docs'))
import variants_table  # noqa: E402


def write_trial(sweep_dir, name, config, bleu, seconds):
    trial = sweep_dir / name
    trial.mkdir(parents=True)
    files = {'config.json': config.to_dict(), 'run_info.json': {'parameters': 2_500_000},
             'budget.json': {'step_seconds': seconds, 'num_steps': int(60 / seconds)},
             'eval_test2016.json': {'tokenized_lowercased_bleu': bleu, 'sacrebleu': bleu - 1,
                                    'chrf': 60.0, 'decode_tokens_per_sec': 500.0,
                                    'kv_cache_bytes_per_token': 6144, 'length_penalty': 0.6,
                                    'length_penalty_tuning': {'tokenized_lowercased_bleu': {
                                        '0.6': bleu + 1, '1': bleu}}}}
    for file, content in files.items():
        (trial / file).write_text(json.dumps(content))


def test_rows_group_seeds_and_name_each_block(tmp_path, capsys):
    paper = 'configs/multi30k.py:reverse=True,budget=1'
    for seed, bleu in ((0, 30.0), (1, 32.0)):
        config = load_config(paper)
        config.seed = seed
        write_trial(tmp_path, f'paper{seed}', config, bleu, 0.5)
    rope = load_config(paper)
    rope.model.positional = 'rope'
    write_trial(tmp_path, 'rope', rope, 33.0, 0.4)
    write_trial(tmp_path, 'decoder_only', load_config(paper + ',arch=decoder_only'), 29.0, 0.5)
    causal = load_config(paper + ',arch=decoder_only')
    causal.model.prefix_lm = False
    write_trial(tmp_path, 'causal', causal, 28.0, 0.5)
    (tmp_path / 'unfinished').mkdir()  # a trial without scores is left out
    variants_table.main([str(tmp_path)])
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert rows[0].startswith('| en→de | paper | 0,1 | 32.00 (31.00–33.00) | 31.00 (30.00–32.00)')
    assert rows[1].startswith('| en→de | decoder_only | 0 | 30.00 | 29.00 |')
    assert rows[2].startswith('| en→de | paper + positional=rope | 0 | 34.00 | 33.00 |')
    assert '| 2.50 | 0.400 | 150 | 500 | 6144 | 0.6 |' in rows[2]
    assert rows[3].startswith('| en→de | decoder_only + prefix_lm=False | 0 | 29.00 |')


def test_an_empty_sweep_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match='run the sweep'):
        variants_table.main([str(tmp_path)])
