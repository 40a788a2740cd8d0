"""The streamed ``model`` source on tiny random BERT and Gemma-3 models: batch i is a pure function of
(seed, i) whatever came before (a resumed run sees the same batches), a fill's rows are what harvesting
writes for its texts, no training row comes from a held-out text, the held-out split is the harvest of
the held-out texts, and a training run killed and resumed ends bitwise where an uninterrupted one does."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

pytest.importorskip("tokenizers")

import saejax  # noqa: E402
from saejax import first_letter, harvest  # noqa: E402
from saejax.config import base_config  # noqa: E402
from saejax.data import Source, make_source  # noqa: E402
from saejax.data.store import MANIFEST  # noqa: E402
from saejax.data.stream import ModelSource  # noqa: E402
from saejax.data.texts import TextOrder  # noqa: E402
from saejax.errors import ConfigError, DataError  # noqa: E402
from saejax.models.loading import load_text_model  # noqa: E402
from saejax.models.gemma3_config import FULL, SLIDING  # noqa: E402
from test_models_gemma3_config import BASE, CURRENT_ROPE, _hf_folder, _random_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,"
WORDS = ["cat", "dog", "sparse", "code", "jax", "tpu", "the", "sat", "on", "mat", "a", "of", "feature", "model"]
# 20 words for each letter (520), so that the first-letter task can probe every letter
LETTER_WORDS = [f"{letter}{tail}" for letter in first_letter.LETTERS
                for tail in ("at", "og", "ip", "un", "ex", "ol", "ir", "um", "ak", "ee", "ow", "id", "ay", "ub", "en",
                             "if", "az", "oy", "uz", "ep")]


def _text(i: int) -> str:
    """Text number i: unique, 20 to 46 characters (a paragraph the corpus reader keeps whole at CONTEXT)."""
    words, j = [f"n{i}"], 0
    while len(" ".join(words)) < 20 + 6 * (i % 4):
        words, j = words + [WORDS[(i * 7 + j * 3) % len(WORDS)]], j + 1
    return " ".join(words)


TEXTS = [_text(i) for i in range(120)]  # 5 to 14 tokens each with the tiny BERT's vocabulary
LAYER, SITE, CONTEXT = 1, "resid_post", 16
# 4 contexts a forward pass = chunks of 32 texts (harvest's 8 batches); fills of 64 texts = 2 chunks
SIZES = dict(context_length=CONTEXT, buffer_contexts=64, forward_batch=4, shuffle_texts=50)


def _tokenizer(specials: list[str], template: str, words: list[str]):
    """A WordPiece tokenizer over `words` and single characters (any lowercase text tokenises),
    `specials` first (ids 0, 1, ...), marked special, and the post-processing `template`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate([*specials, *words, *CHARS, *(f"##{c}" for c in CHARS)])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=specials[1] if "[UNK]" in specials else "<unk>"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    tokenizer.add_special_tokens([t for t in specials if t not in ("[UNK]", "<unk>")])
    return tokenizer, len(vocab)


def tiny_bert(folder: Path, seed: int = 0, words: list[str] = WORDS) -> Path:
    """A Hugging Face BERT folder: 2 layers of width 16, random weights, a tokenizer of `words` and single
    characters."""
    from safetensors.numpy import save_file

    tokenizer, vocab = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]", words)
    d, inner, layers = 16, 32, 2
    config = {"model_type": "bert", "vocab_size": vocab, "hidden_size": d, "num_hidden_layers": layers,
              "num_attention_heads": 2, "intermediate_size": inner, "max_position_embeddings": 64,
              "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    rng = np.random.default_rng(seed)
    shapes = {"embeddings.word_embeddings.weight": (vocab, d), "embeddings.position_embeddings.weight": (64, d),
              "embeddings.token_type_embeddings.weight": (2, d)}
    norms = ["embeddings.LayerNorm"]
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {"attention.self.query": (d, d), "attention.self.key": (d, d),
                                   "attention.self.value": (d, d), "attention.output.dense": (d, d),
                                   "intermediate.dense": (inner, d), "output.dense": (d, inner)}.items():
            shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (rows, cols), (rows,)
        norms += [p + "attention.output.LayerNorm", p + "output.LayerNorm"]
    tensors = {name: rng.standard_normal(shape) * (0.3 if len(shape) == 2 else 0.05) for name, shape in shapes.items()}
    for name in norms:
        tensors[name + ".weight"] = 1 + 0.1 * rng.standard_normal(d)
        tensors[name + ".bias"] = 0.1 * rng.standard_normal(d)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({name: value.astype(np.float32) for name, value in tensors.items()}, str(folder / "model.safetensors"))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def _spaced_words_tokenizer(specials: list[str], template: str, words: list[str]):
    """A tokenizer whose `words` read as Gemma's do, one token each with the space before it ('▁cat'),
    and whose other text falls to single characters; `specials` first, then the `template`."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    pieces = [*specials, *(f"▁{w}" for w in words), "▁", *CHARS, *(f"##{c}" for c in CHARS)]
    vocab = {token: i for i, token in enumerate(pieces)}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("▁?[a-z0-9]+|[^a-z0-9▁]|▁"), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
    tokenizer.add_special_tokens([t for t in specials if t != "<unk>"])
    return tokenizer, len(vocab)


def tiny_gemma(folder: Path, words: list[str] = ()) -> Path:
    """A Hugging Face Gemma-3 folder (4 layers of width 32, random weights) with a tokenizer that
    prepends BOS (id 2; pad 0, eos 1): single characters only, or with `words` also those, spelled as
    Gemma spells words ('▁cat', so that the first-letter task finds them)."""
    specials, template = ["<pad>", "<eos>", "<bos>", "<unk>"], "<bos> $A"
    tokenizer, vocab = (_spaced_words_tokenizer(specials, template, list(words)) if words
                        else _tokenizer(specials, template, []))
    config = {**BASE, **CURRENT_ROPE, "layer_types": [SLIDING, FULL] * 2}
    config["vocab_size"] = max(config["vocab_size"], vocab)
    _hf_folder(folder, config, _random_weights(config))
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return load_text_model(str(tiny_bert(tmp_path_factory.mktemp("models") / "bert")))


def stream(model, texts=TEXTS, heldout=(), seed=0, **sizes):
    return ModelSource(model, lambda: iter(texts), lambda: iter(heldout), seed=seed, layer=LAYER, site=SITE,
                       **{**SIZES, **sizes})


def harvested(model, texts, tmp_path, batch_size=SIZES["forward_batch"]) -> np.ndarray:
    """What `saejax.harvest.harvest` writes for `texts`, all rows in order."""
    harvest.harvest(model, texts, layer=LAYER, site=SITE, out_dir=tmp_path, context_length=CONTEXT,
                    batch_size=batch_size, rows_per_shard=10**6)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    return np.concatenate([np.load(tmp_path / s["file"]) for s in manifest["shards"]])


def as_set(rows: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in rows}


def test_text_order_is_a_seeded_shuffle_of_each_pass_and_any_position_reads_the_same():
    texts = [f"t{i}" for i in range(23)]
    order = TextOrder(lambda: iter(texts), seed=3, block_texts=5)
    sequential = [t for start in range(0, 100, 7) for t in order.texts(start, start + 7)]
    for epoch in range(4):
        pass_texts = sequential[epoch * 23:(epoch + 1) * 23]
        assert sorted(pass_texts) == sorted(texts)  # every pass reads every text once
        assert [set(pass_texts[b:b + 5]) for b in range(0, 23, 5)] == [set(texts[b:b + 5]) for b in range(0, 23, 5)]
    assert sequential[:23] != texts and sequential[:23] != sequential[23:46]  # shuffled, anew every pass
    fresh = TextOrder(lambda: iter(texts), seed=3, block_texts=5)
    assert fresh.texts(60, 75) == sequential[60:75] and fresh.texts(3, 9) == sequential[3:9]  # backwards: re-read
    assert fresh.epoch_texts == 23 and fresh.texts(80, 85) == sequential[80:85]  # epochs ahead: a jump
    far = TextOrder(lambda: iter(texts), seed=3, block_texts=5).texts(23 * 10**9, 23 * 10**9 + 5)  # one pass, a jump
    assert len(set(far)) == 5 and set(far) <= set(texts[:5]) and far != texts[:5]
    assert TextOrder(lambda: iter(texts), seed=3, block_texts=1).texts(20, 26) == texts[20:] + texts[:3]
    with pytest.raises(DataError, match="no texts"):
        TextOrder(lambda: iter([]), seed=0, block_texts=4).texts(0, 1)
    with pytest.raises(ConfigError, match="data.shuffle_texts"):
        TextOrder(lambda: iter(texts), seed=0, block_texts=0)


def test_a_chunk_tokenised_once_pads_each_batch_as_tokenising_the_batch_alone_does(bert):
    from saejax.models.loading import bucket_length, padded_batch, padded_rows

    assert [bucket_length(n, 128) for n in (1, 16, 17, 24, 25, 33, 49, 65, 97, 300)] == [16, 16, 24, 24, 32, 48, 64,
                                                                                        96, 128, 128]
    assert bucket_length(20, 20) == 20 and bucket_length(100, 256) == 128
    ids, mask = bert.tokenize(TEXTS[:40], CONTEXT)
    rows = np.asarray([3, 17, 5, 30])
    for got, want in zip(padded_rows(bert, ids[rows], mask[rows], CONTEXT),
                         padded_batch(bert, [TEXTS[i] for i in rows], CONTEXT)):
        np.testing.assert_array_equal(got, want)


def test_batch_i_is_the_same_whatever_came_before(bert):
    source = stream(bert)
    per_fill = source.batches_per_fill(32)
    assert per_fill >= 2  # batches come from the inside of fills, not only their starts
    steps = list(range(3 * per_fill + 2))
    in_order = [source.batch(i, 32) for i in steps]
    fresh = stream(bert)
    for i in reversed(steps):  # as a resumed run, from any step: the same rows, bit for bit
        np.testing.assert_array_equal(fresh.batch(i, 32), in_order[i], err_msg=f"step {i}")
    np.testing.assert_array_equal(stream(bert).batch(per_fill + 1, 32), in_order[per_fill + 1])
    assert all(b.dtype == np.float32 and b.shape == (32, 16) for b in in_order)
    assert not np.array_equal(stream(bert, seed=1).batch(0, 32), in_order[0])
    assert fresh.batch(10**12, 32).shape == (32, 16)  # far-off steps (no held-out split): one pass of reading
    # the rows of one batch come from many contexts of the fill, not a few neighbours
    fill_rows = source.fill_rows(0)
    positions = [np.flatnonzero((fill_rows == row).all(1))[0] for row in in_order[0]]
    assert np.ptp(positions) > fill_rows.shape[0] // 2


def test_a_fill_is_the_harvest_of_its_texts_and_hands_out_distinct_rows(bert, tmp_path):
    source = stream(bert)
    texts = source.fill_texts(1)
    assert len(texts) == 64 and set(texts) <= set(TEXTS)
    rows = source.fill_rows(1)
    np.testing.assert_array_equal(rows, harvested(bert, texts, tmp_path))  # the same chunks: bit for bit
    ids, mask = bert.tokenize(texts, CONTEXT)
    assert rows.shape[0] == (mask.astype(bool) & ~bert.special(ids)).sum()  # no [CLS], [SEP] or padding
    per_fill = source.batches_per_fill(16)
    handed = np.concatenate([source.batch(i, 16) for i in range(per_fill, 2 * per_fill)])
    assert handed.shape[0] <= rows.shape[0] and len(as_set(handed)) == handed.shape[0]  # each row once
    assert as_set(handed) <= as_set(rows)
    epoch = [t for j in range(4) for t in source.fill_texts(j)][:len(TEXTS)]
    assert sorted(epoch) == sorted(TEXTS)  # the fills of a pass read every text once


def test_a_fill_short_of_rows_hands_some_out_twice_the_same_way_every_time(bert):
    source = stream(bert, buffer_contexts=4)
    assert source.batches_per_fill(512) == 1 and source.fill_rows(0).shape[0] < 512
    batch = source.batch(0, 512)
    assert as_set(batch) == as_set(source.fill_rows(0))  # every row, some twice
    np.testing.assert_array_equal(stream(bert, buffer_contexts=4).batch(0, 512), batch)


def test_shards_split_every_batch_and_each_process_computes_only_its_own(bert, caplog):
    whole = stream(bert, shards=4)
    per_fill = whole.batches_per_fill(32)
    assert per_fill == stream(bert).batches_per_fill(32)  # a fill hands out as many batches as unsharded
    steps = [0, 1, per_fill + 1, 2 * per_fill]
    batches = {i: whole.batch(i, 32) for i in steps}
    fill = whole.fill_rows(1)  # the shards' harvests one after another: the fill's texts' rows
    np.testing.assert_array_equal(fill, np.concatenate([whole.rows_of(whole.fill_texts(1, s)) for s in range(4)]))
    for s in range(4):  # shard s hands out rows [8s, 8s + 8) of every batch, all from its own texts
        assert as_set(batches[per_fill + 1][8 * s:8 * s + 8]) <= as_set(whole.shard_rows(1, s))
    for count in (2, 4):
        for p in range(count):
            local = stream(bert, shards=4, process=(p, count))
            assert local.process_count == count and list(local.local_shards) == list(range(p * 4 // count,
                                                                                             (p + 1) * 4 // count))
            lo, hi = p * 32 // count, (p + 1) * 32 // count
            for i in reversed(steps):  # as a resumed process: the same rows, bit for bit
                np.testing.assert_array_equal(local.batch(i, 32), batches[i][lo:hi], err_msg=f"{p}/{count} step {i}")
            computed = {key for key in local._fills if key[0] == 2}
            assert computed == {(2, s) for s in local.local_shards}  # past fill 0: its own shards alone
            np.testing.assert_array_equal(local.sample(40), whole.sample(40))  # the same fresh state everywhere
            assert local.stats == whole.stats
    caplog.set_level("WARNING")
    odd = stream(bert, shards=4, process=(1, 3))  # 3 processes do not divide 4 shards: whole batches each
    assert odd.process_count == 1 and "does not divide by the 3 processes" in caplog.text
    np.testing.assert_array_equal(odd.batch(steps[2], 32), batches[steps[2]])
    assert not np.array_equal(stream(bert, shards=2).batch(0, 32), stream(bert).batch(0, 32))  # S makes the stream


def test_rows_written_through_are_read_back_by_the_same_stream_and_train_as_a_store(bert, tmp_path, caplog):
    from saejax.data.npy import NpySource

    folder = tmp_path / "through"
    plain = stream(bert, heldout=TEXTS[:40])
    first = stream(bert, heldout=TEXTS[:40], store=str(folder))
    per_fill = first.batches_per_fill(32)
    steps = [0, per_fill + 1, 2 * per_fill]
    for i in steps:  # writing through changes nothing
        np.testing.assert_array_equal(first.batch(i, 32), plain.batch(i, 32))
    np.testing.assert_array_equal(first.heldout_batch(0, 50), plain.heldout_batch(0, 50))
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["fill_0000000_000.npy", "fill_0000001_000.npy", "fill_0000002_000.npy", "heldout_000000.npy",
                       "stream.json"]
    assert first.store.written == 4 and first.store.read == 0
    np.testing.assert_array_equal(np.load(folder / "fill_0000001_000.npy"), plain.fill_rows(1))
    again = stream(bert, heldout=TEXTS[:40], store=str(folder))  # a later run of the same stream: reads
    for i in reversed(steps):
        np.testing.assert_array_equal(again.batch(i, 32), plain.batch(i, 32))
    np.testing.assert_array_equal(again.heldout_batch(0, 50), plain.heldout_batch(0, 50))
    assert again.store.read == 4 and again.store.written == 0
    (folder / "fill_0000002_000.npy").write_bytes(b"\x93NUMPY damaged")  # a damaged file is computed again
    caplog.set_level("WARNING")
    np.testing.assert_array_equal(stream(bert, store=str(folder)).batch(2 * per_fill, 32), plain.batch(2 * per_fill, 32))
    assert "fill_0000002_000.npy cannot be read" in caplog.text
    np.testing.assert_array_equal(np.load(folder / "fill_0000002_000.npy"), plain.fill_rows(2))
    identity = json.loads((folder / "stream.json").read_text())
    del identity["dtype"]  # written before the field existed: float32 rows
    (folder / "stream.json").write_text(json.dumps(identity))
    assert stream(bert, store=str(folder)).batch(0, 32).shape == (32, 16)
    with pytest.raises(ConfigError, match=r"data.path='.*through' holds the rows of another stream \(seed: 0 here, 1 "):
        stream(bert, seed=1, store=str(folder)).batch(0, 32)
    with pytest.raises(ConfigError, match=r"stream_shards: 1 here, 2 wanted"):
        stream(bert, shards=2, store=str(folder)).batch(0, 32)
    store = NpySource(str(folder / "fill_*.npy"), seed=0, chunk_rows=16, shuffle_rows=64)  # the fills as a store
    assert store.d_in == 16 and store.n_rows == sum(plain.fill_rows(j).shape[0] for j in range(3))
    assert as_set(store.batch(0, 64)) <= as_set(np.concatenate([plain.fill_rows(j) for j in range(3)]))


def test_a_bfloat16_stream_keeps_and_writes_rows_rounded_and_hands_them_out_as_float32(bert, tmp_path):
    from saejax.data.store import decode, encode

    def rounded(rows):
        return decode(encode(rows, "bfloat16"), "bfloat16")

    plain = stream(bert, heldout=TEXTS[:40])
    half = stream(bert, heldout=TEXTS[:40], dtype="bfloat16", store=str(tmp_path / "rows"))
    for i in (0, 5, half.batches_per_fill(32) + 1):
        batch = half.batch(i, 32)
        assert batch.dtype == np.float32
        np.testing.assert_array_equal(batch, rounded(plain.batch(i, 32)))
    np.testing.assert_array_equal(half.heldout_batch(0, 50), rounded(plain.heldout_batch(0, 50)))
    np.testing.assert_array_equal(half.sample(40), rounded(plain.sample(40)))
    assert half._shard_kept(0, 0).dtype == np.uint16 and half._shard_kept(0, 0).nbytes * 2 == plain.fill_rows(0).nbytes
    assert np.load(tmp_path / "rows" / "fill_0000000_000.npy").dtype == np.uint16
    again = stream(bert, heldout=TEXTS[:40], dtype="bfloat16", store=str(tmp_path / "rows"))
    np.testing.assert_array_equal(again.batch(5, 32), half.batch(5, 32))
    assert again.store.read == 1 and again.store.written == 0
    with pytest.raises(ConfigError, match="dtype: 'bfloat16' here, 'float32' wanted"):
        stream(bert, store=str(tmp_path / "rows")).batch(0, 32)
    with pytest.raises(ConfigError, match="data.stream_dtype='float16' must be float32 or bfloat16"):
        stream(bert, dtype="float16")


def test_no_training_row_comes_from_a_held_out_text(bert, tmp_path):
    (tmp_path / "corpus.txt").write_text("\n\n".join(TEXTS))
    model = ml_collections.ConfigDict({"name": "tiny", "layer": LAYER, "site": SITE, "context_length": CONTEXT,
                                       "text_glob": str(tmp_path / "*.txt")})
    data = ml_collections.ConfigDict({"source": "model", "buffer_contexts": 64, "forward_batch": 4,
                                      "shuffle_texts": 50, "heldout_max_rows": 10**6})
    source = make_source(data, 0, model=model, text_model=bert)
    heldout_texts = TEXTS[::harvest.HELD_OUT_EVERY]
    assert list(harvest.run_texts(model, held_out=True)) == heldout_texts  # as harvesting holds them out
    assert source.heldout_layout()[0] == heldout_texts
    training = [t for j in range(4) for t in source.fill_texts(j)]
    assert not set(training) & set(heldout_texts) and set(training) == set(TEXTS) - set(heldout_texts)
    heldout = np.concatenate([source.heldout_batch(i, 50) for i in range(-(-source.heldout_rows // 50))])
    np.testing.assert_array_equal(heldout, harvested(bert, heldout_texts, tmp_path / "heldout"))
    assert source.heldout_batch(10**6, 50).shape == (0, 16)
    trained = np.concatenate([source.batch(i, 64) for i in range(4 * source.batches_per_fill(64))])
    assert not as_set(trained) & as_set(heldout)
    capped = make_source(ml_collections.ConfigDict({**data.to_dict(), "heldout_max_rows": 30}), 0, model=model,
                         text_model=bert)
    assert capped.heldout_rows == 30 and capped.heldout_batch(0, 64).shape == (30, 16)
    np.testing.assert_array_equal(capped.heldout_batch(0, 64), heldout[:30])


def test_gemma_rows_skip_bos_and_padding_and_equal_the_harvest(tmp_path):
    gemma = load_text_model(str(tiny_gemma(tmp_path / "gemma")))
    source = stream(gemma)
    texts = source.fill_texts(0)
    rows = source.fill_rows(0)
    np.testing.assert_array_equal(rows, harvested(gemma, texts, tmp_path / "store"))
    ids, mask = gemma.tokenize(texts, CONTEXT)
    assert ids[0, 0] == 2 and rows.shape[0] == mask.sum() - len(texts)  # every BOS skipped
    assert rows.shape[1] == 32 and np.isfinite(rows).all()
    np.testing.assert_array_equal(stream(gemma).batch(3, 8), source.batch(3, 8))
    np.testing.assert_array_equal(source.sample(50), stream(gemma).sample(50))
    stats = source.stats
    assert stats["rows"] == rows.shape[0]
    assert stats["mean_sq_norm"] == pytest.approx(float(np.mean(np.sum(rows.astype(np.float64) ** 2, 1))))


def test_bad_settings_are_one_clear_error(bert):
    data = base_config().data
    data.source = "model"
    with pytest.raises(ConfigError, match="set --config.model.name"):
        make_source(data, 0, model=base_config().model)
    for field, value in (("buffer_contexts", 0), ("forward_batch", 0), ("shuffle_texts", 0)):
        with pytest.raises(ConfigError, match=f"data.{field} must be >= 1"):
            stream(bert, **{field: value}).batch(0, 8)
    with pytest.raises(DataError, match="no texts"):
        stream(bert, texts=[]).batch(0, 8)
    with pytest.raises(ConfigError, match=r"data.buffer_contexts=64 must divide by data.stream_shards=5"):
        stream(bert, shards=5)
    with pytest.raises(ConfigError, match=r"data.stream_shards must be >= 1, got 0"):
        stream(bert, shards=0)
    with pytest.raises(ConfigError, match=r"train.batch_size=30 must be divisible by data.stream_shards=4"):
        stream(bert, shards=4).batch(0, 30)
    with pytest.raises(ConfigError, match="hook layer 5 does not exist"):
        ModelSource(bert, lambda: iter(TEXTS), lambda: iter(()), seed=0, layer=5, site=SITE)


def test_a_stream_run_resumes_only_with_the_same_model_and_the_dry_run_computes_nothing(bert, tmp_path):
    from saejax import plan, resume

    config = base_config()
    config.data.source, config.model.name = "model", bert.name
    saved = json.loads(config.to_json_best_effort())
    changed = json.loads(config.to_json_best_effort())
    changed["model"]["layer"], changed["model"]["eval_texts"] = 2, 7
    assert resume._incompatible(saved, changed) == ["model.layer: 3 -> 2"]  # the stream changes; eval_texts does not
    del saved["data"]["stream_shards"]  # saved before the field existed: one shard, as now
    assert resume._incompatible(saved, json.loads(config.to_json_best_effort())) == []
    changed["data"]["stream_shards"] = 2
    assert "data.stream_shards: 1 -> 2" in resume._incompatible(saved, changed)
    changed["data"]["stream_shards"] = 1
    saved["data"]["source"] = changed["data"]["source"] = "npy"  # a store's rows do not change with model.layer
    assert resume._incompatible(saved, changed) == []
    config.model.layer = LAYER
    described = plan.describe(config, tmp_path / "run")
    assert f"activations of {bert.name} layer {LAYER} resid_post, computed in fills of 1024 contexts" in described
    assert "d_in=16" in described and not (tmp_path / "run").exists()
    assert isinstance(stream(bert), Source)


# ---------------------------------------------------------------------------------------------
# End to end: experiments/train.py on the stream, killed (SIGKILL) at a random step and run again.

STEPS, EVERY = 400, 20  # 16 batches of 32 a fill: a kill lands inside some fill


def train_command(workdir: Path, model_dir: Path, corpus: Path, *extra: str) -> list[str]:
    flags = [f"--config.model.name={model_dir}", f"--config.model.layer={LAYER}", f"--config.model.text_glob={corpus}",
             f"--config.model.context_length={CONTEXT}", "--config.model.eval_texts=4",
             "--config.model.dashboard_latents=0",
             "--config.data.source=model", "--config.data.buffer_contexts=64", "--config.data.forward_batch=4",
             "--config.sae.arch=topk", "--config.sae.d_sae=64", "--config.sae.k=4", "--config.train.batch_size=32",
             f"--config.train.steps={STEPS}", f"--config.train.checkpoint_every={EVERY}",
             "--config.train.keep_checkpoints=5", "--config.train.log_every=10", "--config.train.eval_rows=200",
             "--config.log.tensorboard=False", "--config.log.progress=False"]
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"--workdir={workdir}", *flags, *extra]


def train(workdir: Path, model_dir: Path, corpus: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(workdir, model_dir, corpus, *extra), capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_train_on_the_stream_then_a_run_killed_at_a_random_step_resumes_bitwise(tmp_path):
    model_dir = tiny_bert(tmp_path / "bert")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    whole = train(tmp_path / "whole", model_dir, corpus)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert "data.source='model'" in whole.stdout and "harvested" not in whole.stdout
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["eval_split"] == "held-out" and summary["d_in"] == 16 and "splice/texts" in summary["eval"]
    assert not (tmp_path / "whole" / "activations").exists()
    killed = subprocess.Popen(train_command(tmp_path / "killed", model_dir, corpus), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT)
    first = tmp_path / "killed" / "checkpoints" / str(EVERY) / "commit_success.txt"
    deadline = time.monotonic() + 300
    while not first.exists():
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.5))
    killed.kill()  # SIGKILL: no handler runs, a save or a fill may be half done
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    killed_at = max(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit())
    assert EVERY <= killed_at < STEPS
    resumed = train(tmp_path / "killed", model_dir, corpus)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    (a, _), (b, _) = saejax.load(tmp_path / "whole"), saejax.load(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_a_run_on_the_rows_another_run_wrote_through_ends_where_that_run_did(tmp_path):
    model_dir, corpus, rows = tiny_bert(tmp_path / "bert"), tmp_path / "corpus.txt", tmp_path / "rows"
    corpus.write_text("\n\n".join(TEXTS))
    through = ["--config.train.steps=60", f"--config.data.path={rows}", "--config.train.evaluators=heldout,export"]
    first = train(tmp_path / "first", model_dir, corpus, *through)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in rows.glob("fill_*.npy"))[:2] == ["fill_0000000_000.npy", "fill_0000001_000.npy"]
    shutil.rmtree(model_dir)
    tiny_bert(model_dir, seed=1)  # other weights under the same name: only the written rows can give the same run
    second = train(tmp_path / "second", model_dir, corpus, *through)
    assert second.returncode == 0, second.stderr[-3000:]
    (a, _), (b, _) = saejax.load(tmp_path / "first"), saejax.load(tmp_path / "second")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    metrics = [json.loads((tmp_path / run / "summary.json").read_text())["eval"] for run in ("first", "second")]
    assert metrics[0] == metrics[1] and metrics[0]["rows"] > 0 and metrics[0]["fvu"] > 0
