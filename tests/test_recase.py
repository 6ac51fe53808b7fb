"""The recaser for lowercased training (transformer/recase.py)."""

from transformer import recase

TARGETS = ['Ein Mann fährt Fahrrad.', 'Zwei Kinder sehen einen Mann mit einem Hund.',
           'Der Hund und der Mann spielen im Park.', 'Hund rennt.']


def test_recaser_gives_each_word_its_usual_form_and_capitalizes_the_start():
    recaser = recase.Recaser.train(TARGETS)
    assert recaser('ein kind sieht den hund und einen mann im park.') == \
        'Ein kind sieht den Hund und einen Mann im Park.'  # 'kind', 'sieht' unseen: kept
    assert recaser('der mann.') == 'Der Mann.'


def test_recaser_ignores_the_case_of_first_words():
    # 'Zwei', 'Der', 'Ein' appear only first: their capital says nothing about the word.
    recaser = recase.Recaser.train(TARGETS)
    assert recaser('der hund sieht zwei kinder') == 'Der Hund sieht zwei Kinder'
    assert 'zwei' not in recaser.forms and 'der' not in recaser.forms


def test_recaser_leaves_text_without_letters_and_round_trips(tmp_path):
    recaser = recase.get_recaser(str(tmp_path), TARGETS)
    assert recaser('') == '' and recaser('... 42') == '... 42'
    assert recaser('- mann') == '- Mann'
    loaded = recase.load_if_present(str(tmp_path))
    assert loaded.forms == recaser.forms and loaded.forms['fahrrad'] == 'Fahrrad'
    assert recase.load_if_present(str(tmp_path / 'cased_run')) is None
