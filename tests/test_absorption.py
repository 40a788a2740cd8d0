"""Feature absorption (saejax.absorption) and the probes under it (saejax.probes): on a hierarchy of
features with absorption planted in a known share of a parent's rows, the metric finds that share, and
it finds none where none was planted; the per-row rules are SAEBench's. The first-letter task
(saejax.first_letter) reads each word at its own token and scores every letter."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from saejax import absorption, first_letter, probes

D, CHILDREN, ABSORBING = 64, 32, 12  # each parent has 32 children; 12 of the first parent's absorb it
PARENT_RATE, ROWS = 0.15, 24_000


def planted_hierarchy(seed: int = 0):
    """(x [n, D], parent_on bool [n, 2], z [n, F], decoder [F, D], absorbed bool [n]): two parent features
    with CHILDREN children each (a child fires only with its parent, with probability 1/CHILDREN), and an
    oracle SAE with a latent per feature, except that the first ABSORBING children of parent 0 absorb it:
    their decoder rows are their direction plus the parent's, and on a row where one fires (the first
    of them only, with the parent's magnitude) the parent's latent is off. `absorbed`: those rows."""
    gen = np.random.default_rng(seed)
    n_features = 2 + 2 * CHILDREN
    dictionary = gen.standard_normal((n_features, D))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    parent_on = gen.random((ROWS, 2)) < PARENT_RATE
    child_on = (gen.random((ROWS, 2, CHILDREN)) < 1 / CHILDREN) & parent_on[:, :, None]
    magnitude = gen.uniform(0.2, 1.0, (ROWS, n_features))
    codes = np.zeros((ROWS, n_features))
    codes[:, :2] = parent_on * magnitude[:, :2]
    codes[:, 2:] = child_on.reshape(ROWS, -1) * magnitude[:, 2:]
    absorbing = 2 + np.arange(ABSORBING)  # children 0 .. ABSORBING-1 of parent 0
    on = codes[:, absorbing] > 0
    first = on & (np.cumsum(on, axis=1) == 1)  # at most one absorbing child a row (each takes the parent whole)
    codes[:, absorbing] = np.where(first, codes[:, [0]], 0.0)  # with the parent's magnitude
    x = codes @ dictionary + 0.01 * gen.standard_normal((ROWS, D))
    decoder, z = dictionary.copy(), codes.copy()
    folded = dictionary[absorbing] + dictionary[0]
    decoder[absorbing] = folded / np.linalg.norm(folded, axis=1, keepdims=True)
    z[:, absorbing] *= np.linalg.norm(folded, axis=1)  # z_c · decoder_c = a (d_c + d_parent)
    absorbed = (codes[:, absorbing] > 0).any(1)
    z[absorbed, 0] = 0.0
    np.testing.assert_allclose(z @ decoder - codes @ dictionary, 0, atol=1e-9)  # the oracle reconstructs exactly
    return x.astype(np.float32), parent_on, z.astype(np.float32), decoder.astype(np.float32), absorbed


def test_the_metric_finds_the_absorption_that_was_planted_and_none_where_there_is_none():
    x, parent_on, z, decoder, absorbed = planted_hierarchy()
    cut = ROWS // 2
    planted = absorption.measure(x, parent_on[:, 0], z, decoder)
    assert list(planted.main_latents) == [0]  # the parent's latent, not split into its absorbing children
    assert planted.probe_f1 > 0.8 and planted.true_positives > 1000
    positives = parent_on[cut:, 0] & (planted.probe_f1 > 0)
    truth = absorbed[cut:][parent_on[cut:, 0]].mean()  # share of the parent's rows an absorbing child took
    assert 0.25 < truth < 0.4
    assert abs(planted.rate - truth) < 0.05, (planted.rate, truth)
    assert planted.fraction == pytest.approx(planted.rate, abs=0.05)  # absorbed rows are absorbed whole
    none = absorption.measure(x, parent_on[:, 1], z, decoder)  # parent 1: nothing planted
    assert list(none.main_latents) == [1]
    # no row fully absorbed; the partial fraction only picks up other features' interference along the probe
    assert none.rate < 0.01 and none.fraction < 0.05, (none.rate, none.fraction)
    assert positives.sum() > 0


def test_a_hierarchy_s_parents_are_measured_each_and_averaged():
    x, parent_on, z, decoder, _ = planted_hierarchy()
    codes = np.zeros((ROWS, 2 + 2 * CHILDREN), np.float32)
    codes[:, :2] = parent_on
    parent = np.concatenate([[-1, -1], np.repeat([0, 1], CHILDREN)])
    found = absorption.hierarchy(x, codes, parent, z, decoder)
    planted = absorption.measure(x, parent_on[:, 0], z, decoder)
    assert found["parents"] == found["scored"] == 2
    assert found["absorption_rate"] == pytest.approx(planted.rate / 2, abs=0.01)  # parent 1 absorbs nothing
    assert absorption.hierarchy(x, codes, parent, z, decoder, max_parents=1)["parents"] == 1


def test_only_an_sae_with_decoder_rows_has_a_dictionary_to_measure():
    from saejax import analysis
    from saejax.config import base_config
    from saejax.errors import ConfigError

    config = base_config()
    config.sae.arch = "mlp"
    with pytest.raises(ConfigError, match="sae.arch='mlp' has no linear decoder rows"):
        analysis.decoder_rows({"encoder": {}, "decoder": {}, "b_dec": np.zeros(4)}, config)
    np.testing.assert_array_equal(analysis.decoder_rows({"W_dec": np.eye(3)}, config), np.eye(3))


def test_row_rules_are_saebench_s():
    cosines = np.array([0.9, 0.5, 0.05, 0.02])  # latent 0 is main
    z = np.array([[0.0, 1.0, 0.0, 0.0],   # main off, latent 1 carries 0.8 of 1.0: full, fraction 1
                  [0.5, 1.0, 0.0, 0.0],   # main on: not full; absorbers 0.3 of 1.0 < 0.4: fraction 0
                  [0.0, 0.0, 1.0, 0.0],   # carried by a latent of cosine 0.05: full (>= 0.025), fraction 0
                  [0.0, 0.0, 0.0, 1.0],   # top latent's cosine 0.02 < 0.025: not full
                  [0.2, 1.0, 0.0, 0.0]])  # main 0.2, absorbers 0.6 of 1.0: fraction 0.6 / 0.8
    contributions = np.array([[0, 0.8, 0, 0], [0.5, 0.3, 0, 0], [0, 0, 0.9, 0], [0, 0, 0, 0.9], [0.2, 0.6, 0, 0]])
    full, fraction = absorption.row_absorption(np.ones(5), contributions, cosines, z, np.array([0]))
    assert full.tolist() == [True, False, True, False, False]
    np.testing.assert_allclose(fraction, [1.0, 0.0, 0.0, 0.0, 0.75])


def test_k_sparse_probes_read_the_latents_that_differ_most_and_a_dense_probe_finds_a_direction():
    gen = np.random.default_rng(1)
    y = gen.random(4000) < 0.3
    z = gen.random((4000, 20)).astype(np.float32) * 0.1
    z[:, 7] += y * 1.0  # latent 7 is the concept
    z[:, 3] += y * gen.random(4000) * 0.5  # latent 3 partly
    runs = probes.k_sparse(z[:2000], y[:2000], z[2000:], y[2000:], ks=(1, 2))
    assert list(runs[0].latents) == [7] and list(runs[1].latents) == [7, 3]
    assert runs[0].f1 > 0.99 and runs[0].accuracy > 0.99
    direction = gen.standard_normal(16)
    x = gen.standard_normal((3000, 16)).astype(np.float32)
    probe = probes.fit(x, (x @ direction > 0).astype(int), n_classes=2)
    cosine = probe.direction() @ direction / np.linalg.norm(probe.direction()) / np.linalg.norm(direction)
    assert cosine > 0.98 and np.mean((probe.margin(x) > 0) == (x @ direction > 0)) > 0.97
    assert probes.f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)


def test_the_first_letter_task_reads_each_word_at_its_token_and_scores_letters(tmp_path):
    pytest.importorskip("tokenizers")
    from test_stream import WORDS, tiny_bert

    from saejax.models.loading import load_text_model

    model = load_text_model(str(tiny_bert(tmp_path / "bert")))
    assert set(first_letter.vocabulary_words(model)) == {w for w in WORDS if len(w) >= 2}
    task = first_letter.build(model, n_words=50, examples=2)
    assert len(task.words) == len({w for w in WORDS if len(w) >= 2})  # every word is one token in its prompt
    for word, prompt, position, letter in zip(task.words, task.prompts, task.positions, task.letters):
        ids, _ = model.tokenize([prompt], 64)
        assert model.token_strings([ids[0, position]]) == [f" {word}"] and prompt.endswith(f" {word}:")
        assert first_letter.LETTERS[letter] == word[0]
    x = first_letter.activations(model, task, 1, "resid_post")
    assert x.shape == (len(task.words), 16) and np.isfinite(x).all()
    # letters planted in an oracle's latents: latent i fires on the words of letter i, along direction i
    gen = np.random.default_rng(0)
    letters = gen.integers(0, 3, 1200)
    directions = np.eye(8, dtype=np.float32)[:3]
    z = np.zeros((1200, 8), np.float32)
    z[np.arange(1200), letters] = gen.uniform(0.5, 1.0, 1200)
    rows = z[:, :3] @ directions + 0.05 * gen.standard_normal((1200, 8)).astype(np.float32)
    report = first_letter.absorption_by_letter(rows, letters, z, np.eye(8, dtype=np.float32))
    assert set(report["letters"]) == {"a", "b", "c"} and report["scored"] == 3
    assert report["absorption_rate"] == 0 and report["main_latents"] == 1
    assert [report["letters"][k]["main_latents"] for k in "abc"] == [[0], [1], [2]]
    assert report["sparse_probe_f1"][0] > 0.99


@pytest.mark.slow
def test_a_run_names_the_absorption_and_probing_evaluators_and_gets_their_reports(tmp_path):
    pytest.importorskip("tokenizers")
    from test_stream import CONTEXT, LAYER, LETTER_WORDS, TEXTS, tiny_bert

    model_dir, corpus = tiny_bert(tmp_path / "bert", words=LETTER_WORDS), tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    root = Path(__file__).resolve().parents[1]
    flags = [f"--config.model.name={model_dir}", f"--config.model.layer={LAYER}", f"--config.model.text_glob={corpus}",
             f"--config.model.context_length={CONTEXT}", "--config.model.absorption_words=520",
             "--config.data.source=model", "--config.data.buffer_contexts=64", "--config.data.forward_batch=4",
             "--config.sae.arch=topk", "--config.sae.d_sae=64", "--config.sae.k=4", "--config.train.batch_size=32",
             "--config.train.steps=20", "--config.train.eval_rows=200", "--config.log.tensorboard=False",
             "--config.log.progress=False", "--config.model.dashboard_latents=2", "--config.model.eval_texts=8",
             "--config.model.probing_snippets=20",
             "--config.train.evaluators=heldout,absorption,probing,dashboards,export"]
    done = subprocess.run([sys.executable, str(root / "experiments" / "train.py"), f"--workdir={tmp_path / 'run'}",
                           *flags], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["eval"]
    assert {"absorption/rate", "absorption/fraction", "absorption/letters",
            "absorption/sparse_probe_f1_k1"} <= set(summary)
    report = json.loads((tmp_path / "run" / "absorption" / "first_letter.json").read_text())
    assert report["words"] == 520 and len(report["letters"]) >= 13  # 20 words a letter: most have 8 on each side
    assert all(0 <= v["rate"] <= 1 and 0 <= v["fraction"] <= 1 for v in report["letters"].values())
    assert (tmp_path / "run" / "absorption" / "first_letter.png").is_file()
    assert 0 <= summary["probing/dense_accuracy"] <= 1 and "probing/sparse_accuracy_k20" in summary
    assert 0 <= summary["probing/code/dense_accuracy"] <= 1 and "probing/code/sparse_accuracy_k1" in summary
    probed = json.loads((tmp_path / "run" / "probing" / "code.json").read_text())
    assert probed["texts"] == 20 * len(probed["class_names"]) and "python" in probed["class_names"]
    assert (tmp_path / "run" / "probing" / "code.png").is_file()
    index = (tmp_path / "run" / "dashboards" / "index.html").read_text()
    assert "Feature absorption (first letter)" in index and f"{report['scored']} letters" in index
    assert "<h2>Sparse probing</h2><h3>language of a source snippet</h3>" in index and "python" in index
    again = subprocess.run([sys.executable, str(root / "experiments" / "absorption.py"),
                            f"--workdir={tmp_path / 'run'}",
                            "--words=520"], capture_output=True, text=True, timeout=600, cwd=root)
    assert again.returncode == 0 and "first-letter absorption of" in again.stdout, again.stderr[-3000:]
    probing = subprocess.run([sys.executable, str(root / "experiments" / "probing.py"), f"--workdir={tmp_path / 'run'}",
                              "--per_class=20", "--tasks=code"], capture_output=True, text=True, timeout=600, cwd=root)
    assert probing.returncode == 0 and "dense probe" in probing.stdout, probing.stderr[-3000:]
