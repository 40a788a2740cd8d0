"""Sparse probing on labelled texts (saejax.labelled_texts: source snippets, translations, sentiment words), pooled
activations and latents (saejax.text_probing), and the k-sparse probes against a dense one."""

import json

import numpy as np
import pytest

from saejax import labelled_texts, snippets, text_probing
from saejax.errors import DataError


def test_snippets_are_windows_of_each_language_s_files_balanced_and_seeded(tmp_path):
    for i in range(6):
        (tmp_path / f"m{i}.py").write_text("\n".join(f"def f{j}(x):\n    return x + {j}" for j in range(20)))
        (tmp_path / f"d{i}.json").write_text(json.dumps({f"k{j}": j for j in range(40)}, indent=1))
    (tmp_path / "notes.rst").write_text("Title\n=====\n\nOne line.\n")  # too few windows: rst is left out
    texts, labels, names = snippets.snippets(per_language=12, lines=4, roots=[tmp_path])
    assert names == ["python", "json"] and np.bincount(labels).tolist() == [12, 12]
    for text, label in zip(texts, labels):
        assert len(text.splitlines()) == 4 and (text.lstrip().startswith(("def", "return")) == (label == 0))
    assert snippets.snippets(per_language=12, lines=4, roots=[tmp_path])[0] == texts  # seeded
    with pytest.raises(DataError, match="fewer than two languages"):
        snippets.snippets(per_language=1000, roots=[tmp_path])


def test_sparse_probes_on_latents_that_carry_the_classes_match_the_dense_probe():
    gen = np.random.default_rng(0)
    labels = gen.integers(0, 3, 900)
    z = gen.random((900, 12)).astype(np.float32) * 0.1
    z[np.arange(900), labels] += 1.0  # latent c fires on class c
    x = z @ gen.standard_normal((12, 8)).astype(np.float32)
    report = text_probing.sparse_probing(x, z, labels, ["a", "b", "c"], ks=(1, 2))
    assert report["sparse_accuracy"][1] > 0.99 and report["dense_accuracy"] > 0.95
    assert set(report["classes"]) == {"a", "b", "c"} and report["classes"]["a"]["sparse_f1"][1] > 0.99


def test_pooled_is_the_mean_over_each_text_s_kept_tokens(tmp_path):
    pytest.importorskip("tokenizers")
    from test_stream import tiny_bert

    from saejax import harvest
    from saejax.models.loading import load_text_model, padded_batch

    model = load_text_model(str(tiny_bert(tmp_path / "bert")))
    texts = ["the cat sat on the mat", "a dog", "sparse code of jax on tpu"]
    x, z = text_probing.pooled(model, texts, 1, "resid_post", lambda rows: rows * 2, batch_size=2)
    ids, mask, keep = padded_batch(model, texts[2:], 64)
    acts = np.asarray(harvest.capture_at(model, 1, "resid_post")(model.params, ids, mask))[0][keep[0]]
    np.testing.assert_allclose(x[2], acts.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, 2 * x, rtol=1e-5, atol=1e-6)


PO_FILE = r'''# A header comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

msgid "Enter a valid value."
msgstr "Geben Sie einen gültigen Wert ein."

#, fuzzy
msgid "This guess is fuzzy."
msgstr "Diese Vermutung ist unscharf."

msgid "Not translated yet."
msgstr ""

msgid ""
"A message written "
"on two lines."
msgstr ""
"Eine Meldung auf "
"zwei \"Zeilen\"."

msgid "One item was changed."
msgid_plural "%(count)s items were changed."
msgstr[0] "Ein Eintrag wurde geändert."
msgstr[1] "%(count)s Einträge wurden geändert."

#~ msgid "An obsolete message."
#~ msgstr "Eine veraltete Meldung."
'''


def test_po_messages_reads_translated_singular_messages_and_skips_header_fuzzy_empty_and_obsolete(tmp_path):
    path = tmp_path / "django.po"
    path.write_text(PO_FILE, encoding="utf-8")
    assert labelled_texts.po_messages(path) == {
        "Enter a valid value.": "Geben Sie einen gültigen Wert ein.",
        "A message written on two lines.": 'Eine Meldung auf zwei "Zeilen".',
        "One item was changed.": "Ein Eintrag wurde geändert."}


def _django_tree(root, n_messages):
    for code in labelled_texts.TRANSLATED:
        if code != "en":
            folder = root / "conf" / "locale" / code / "LC_MESSAGES"
            folder.mkdir(parents=True)
            (folder / "django.po").write_text("".join(f'msgid "message number {i} here"\nmsgstr "{code} text {i} '
                                                      f'übersetzt"\n\n' for i in range(n_messages)), encoding="utf-8")


def test_translations_are_the_same_messages_in_each_language_balanced_and_seeded(tmp_path):
    _django_tree(tmp_path, 30)
    texts, labels, names = labelled_texts.translations(per_class=10, root=tmp_path)
    assert names == list(labelled_texts.TRANSLATED.values()) and np.bincount(labels).tolist() == [10] * len(names)
    codes = list(labelled_texts.TRANSLATED)
    for text, label in zip(texts, labels):
        assert text.startswith("message number") if codes[label] == "en" else text.startswith(f"{codes[label]} text")
    assert labelled_texts.translations(per_class=10, root=tmp_path)[0] == texts  # seeded
    with pytest.raises(DataError, match="gives? 30 messages .* fewer than 40"):
        labelled_texts.translations(per_class=40, root=tmp_path)


def test_sentiment_words_take_letter_only_words_rated_at_least_one_from_neutral(tmp_path):
    lines = ["good\t1.9\t0.5\t[2, 2]", "bad\t-2.5\t0.5\t[-2, -3]", "meh\t0.4\t0.5\t[0, 1]", ":)\t2.0\t0.5\t[2, 2]",
             "great\t3.1\t0.3\t[3, 3]", "awful\t-1.0\t0.3\t[-1, -1]", "fine\t1.0\t0.3\t[1, 1]"]
    (tmp_path / "vader_lexicon.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    words, labels, names = labelled_texts.sentiment_words(per_class=2, root=tmp_path)
    assert names == ["negative", "positive"]
    assert sorted(w for w, y in zip(words, labels) if y == 0) == ["awful", "bad"]
    assert len({w for w, y in zip(words, labels) if y == 1} - {"good", "great", "fine"}) == 0
    with pytest.raises(DataError, match="rates 2 words negative, fewer than 3"):
        labelled_texts.sentiment_words(per_class=3, root=tmp_path)
    (tmp_path / "vader_lexicon.txt").write_text("ok\tseven\t0.1\t[]\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"vader_lexicon.txt:1: the mean rating 'seven'"):
        labelled_texts.sentiment_words(per_class=1, root=tmp_path)


def test_task_names_resolve_auto_and_refuse_unknown_or_uninstalled_tasks(monkeypatch):
    assert text_probing.task_names("code") == ["code"]
    assert text_probing.task_names("auto")[0] == "code"
    with pytest.raises(DataError, match="expected auto or a comma-separated list of code, language, sentiment"):
        text_probing.task_names("code,topic")
    monkeypatch.setattr(labelled_texts, "available", lambda task: task == "code")
    assert text_probing.task_names("auto") == ["code"]
    with pytest.raises(DataError, match=r"sentiment read texts from vaderSentiment, not installed: pip install"):
        text_probing.task_names("code,sentiment")


def test_the_summary_holds_each_task_and_the_means_over_tasks():
    reports = [{"task": "code", "dense_accuracy": 0.9, "sparse_accuracy": {1: 0.6, 5: 0.8}},
               {"task": "sentiment", "dense_accuracy": 0.7, "sparse_accuracy": {1: 0.5, 5: 0.6}}]
    metrics = text_probing.summary_metrics(reports)
    assert metrics["probing/code/sparse_accuracy_k5"] == 0.8 and metrics["probing/sentiment/dense_accuracy"] == 0.7
    assert metrics["probing/dense_accuracy"] == pytest.approx(0.8) and metrics["probing/sparse_accuracy_k1"] == 0.55


def test_the_installed_translations_and_lexicon_give_every_class():
    pytest.importorskip("django")
    pytest.importorskip("vaderSentiment")
    texts, labels, names = labelled_texts.load("language", per_class=200)
    assert len(names) == 7 and np.bincount(labels).tolist() == [200] * 7 and len(set(texts)) > 1000
    words, labels, names = labelled_texts.load("sentiment", per_class=1000)
    assert names == ["negative", "positive"] and np.bincount(labels).tolist() == [1000, 1000]


def test_the_probing_evaluator_refuses_a_bad_task_list_before_training():
    from types import SimpleNamespace

    import ml_collections

    from saejax.errors import ConfigError
    from saejax.evaluate import language

    def run(**model):
        return SimpleNamespace(text_model=object(), config=ml_collections.ConfigDict({"model": model}))

    assert language.probing_applies(run(probing_snippets=0, probing_tasks="topic")) == "model.probing_snippets is 0"
    assert language.probing_applies(run(probing_snippets=10, probing_tasks="code")) is None
    with pytest.raises(ConfigError, match="model.probing_tasks: probing tasks 'topic': expected auto or"):
        language.probing_applies(run(probing_snippets=10, probing_tasks="topic"))


def test_balanced_accuracy_weighs_both_sides_equally():
    from saejax import probes

    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0], bool)
    assert probes.balanced_accuracy(np.zeros(8, bool), labels) == 0.5  # "never": 7 of 8 right, still chance
    assert probes.balanced_accuracy(labels, labels) == 1.0
    assert probes.balanced_accuracy(np.array([1, 1, 1, 0, 0, 0, 0, 0], bool), labels) == pytest.approx((1 + 5 / 7) / 2)
