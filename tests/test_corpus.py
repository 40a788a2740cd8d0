"""The offline text corpus: paragraphs in a fixed order, long ones cut into windows that lose nothing."""

from itertools import islice

import pytest

from saejax.harvest import CHARS_PER_TOKEN, HELD_OUT_EVERY, corpus_texts, run_texts
from saejax.config import base_config
from saejax.models import corpus


def test_windows_cut_long_texts_at_whitespace_and_keep_every_word():
    text = " ".join(f"word{i}" for i in range(200))
    pieces = list(corpus.windows(["short one", text], 50))
    assert pieces[0] == "short one"
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces[1:]) == text  # cut only at spaces, in order
    assert list(corpus.windows(["x" * 7 + " yy"], 3)) == ["xxx", "xxx", "x", "yy"]  # an over-long word is cut
    with pytest.raises(ValueError, match="max_chars"):
        list(corpus.windows(["a"], 0))


def test_run_texts_hold_out_whole_paragraphs_and_fit_the_context(tmp_path):
    paragraphs = [f"paragraph {i} of the test corpus " + " ".join(["lorem"] * (i * 10)) for i in range(30)]
    (tmp_path / "a.txt").write_text("\n\n".join(paragraphs))
    config = base_config()
    config.model.text_glob = str(tmp_path / "*.txt")
    config.model.context_length = 16
    train, held_out = list(run_texts(config.model, False)), list(run_texts(config.model, True))
    assert all(len(t) <= CHARS_PER_TOKEN * 16 for t in train + held_out)
    held_out_paragraphs = {p.split()[1] for p in held_out if p.startswith("paragraph")}
    assert held_out_paragraphs == {str(i) for i in range(0, 30, HELD_OUT_EVERY)}
    assert not any(t.startswith("paragraph") and int(t.split()[1]) % HELD_OUT_EVERY == 0 for t in train)
    assert sum(len(t.split()) for t in train + held_out) == sum(len(p.split()) for p in paragraphs)


def test_the_stdlib_corpus_windows_fit_the_context():
    texts = list(islice(corpus_texts("", 128), 2000))
    assert len(texts) == 2000 and all(0 < len(t) <= CHARS_PER_TOKEN * 128 for t in texts)
