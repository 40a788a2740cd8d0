"""Sparse probing on labelled texts: snippets of source files by language (saejax.snippets), pooled
activations and latents (saejax.text_probing), and the k-sparse probes against a dense one."""

import json

import numpy as np
import pytest

from saejax import snippets, text_probing
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
