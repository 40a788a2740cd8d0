"""benchmarks/stream_throughput.py on a tiny random BERT and Gemma 3: both pipelines keep the same tokens and
compute the same rows, and the result and its table carry every rate the report quotes."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from benchmarks import stream_throughput, write_results  # noqa: E402
from test_stream import tiny_bert, tiny_gemma  # noqa: E402


@pytest.mark.parametrize("make, d_model", [(tiny_bert, 16), (tiny_gemma, 32)], ids=["bert", "gemma3"])
def test_stream_throughput_on_a_tiny_model(tmp_path, make, d_model):
    folder = make(tmp_path / "model")
    result = stream_throughput.measure(str(folder), n_texts=12, repeats=1, layer=0, context_length=32, batch=4,
                                       step_d_sae=64, step_batch=256, step_repeats=1)
    assert result["kept_tokens"] > 12 and result["layer"] == 0 and result["d_model"] == d_model
    for key in ("saejax", "torch_full", "torch_to_layer"):
        assert result["tokens_per_s"][key] == pytest.approx(result["kept_tokens"] / result["seconds"][key])
    assert max(result["max_relative_difference"].values()) < 1e-4  # the same rows, not just the same count
    step = result["topk_step"]
    assert step["rows_per_s_needed"] == pytest.approx(256 / step["step_s"])
    assert step["generate_s_per_batch"] == pytest.approx(256 / result["tokens_per_s"]["saejax"])
    assert 0 < step["generation_share"] < 1
    write_results(tmp_path / "out", "stream_throughput_tiny", result, stream_throughput.table(result))
    assert json.loads((tmp_path / "out" / "stream_throughput_tiny.json").read_text()) == result
    table = (tmp_path / "out" / "stream_throughput_tiny.md").read_text()
    assert "saejax ModelSource" in table and "torch, every block" in table and "TopK step" in table
