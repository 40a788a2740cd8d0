"""saejax.models.gguf_file against the gguf package's own reader on files its writer wrote:
every metadata type, float and quantised tensors; damaged files are one DataError naming the file."""

import numpy as np
import pytest

from saejax.errors import DataError
from saejax.models import gguf_file

gguf = pytest.importorskip("gguf")


def _write(path):
    """A GGUF file with one metadata entry of each kind and F32, F16 and Q8_0 tensors."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_uint32("test.u32", 7)
    writer.add_int64("test.i64", -(2**40))
    writer.add_float32("test.f32", 0.25)
    writer.add_float64("test.f64", 1e-300)
    writer.add_bool("test.bool", True)
    writer.add_string("test.string", "Sparse ▁autoencoders")
    writer.add_array("test.strings", ["<pad>", "", "▁the", "ü" * 3])
    writer.add_array("test.ints", [3, -1, 2**20])
    writer.add_array("test.floats", [0.5, -2.0])
    writer.add_array("test.bools", [True, False, True])
    writer.add_array("test.nested", [[1, 2], [3]])
    tensors = {"f32": rng.standard_normal((3, 5)).astype(np.float32),
               "f16": rng.standard_normal((2, 4, 6)).astype(np.float16),
               "vector": rng.standard_normal(7).astype(np.float32)}
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    q8 = rng.standard_normal((4, 64)).astype(np.float32)
    writer.add_tensor("q8", gguf.quants.quantize(q8, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {**tensors, "q8": q8}


def test_metadata_and_tensors_match_the_gguf_package(tmp_path):
    path = tmp_path / "model.gguf"
    written = _write(path)
    ours, theirs = gguf_file.read(path), gguf.GGUFReader(str(path))
    assert ours.metadata["test.nested"] == [[1, 2], [3]]  # the package's reader flattens arrays of arrays
    theirs_metadata = {key: field.contents() for key, field in theirs.fields.items() if not key.startswith("GGUF.")}
    assert {k: v for k, v in ours.metadata.items() if k != "test.nested"} == {
        k: v for k, v in theirs_metadata.items() if k != "test.nested"}
    assert ours.metadata["test.strings"] == ["<pad>", "", "▁the", "üüü"]
    assert ours.metadata["test.bools"] == [True, False, True]
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors] == ["f32", "f16", "vector", "q8"]
    for tensor, reference in zip(ours.tensors, theirs.tensors):
        values = gguf_file.dequantize(tensor)
        assert values.dtype == np.float32 and values.shape == written[tensor.name].shape
        expected = gguf.dequantize(reference.data, reference.tensor_type).reshape(values.shape)
        np.testing.assert_array_equal(values, expected)
        if tensor.name != "q8":
            np.testing.assert_array_equal(values, written[tensor.name].astype(np.float32))
    np.testing.assert_allclose(gguf_file.dequantize(ours.tensors[-1]), written["q8"], atol=0.03)  # 8-bit blocks


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-20], "'q8' runs past the end of the file"),
    (lambda raw: raw[:200], "ends early|runs past the end"),
    (lambda raw: b"GGML" + raw[4:], "not a GGUF file"),
    (lambda raw: raw[:4] + (9).to_bytes(4, "little") + raw[8:], "GGUF version 9"),
    (lambda raw: b"", "not a GGUF file"),
])
def test_a_damaged_file_is_one_error_naming_it(tmp_path, damage, message):
    """(The writer pads the last tensor to 32 bytes: 20 bytes off cut into its data.)"""
    path = tmp_path / "model.gguf"
    _write(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=f"model.gguf: .*({message})"):
        gguf_file.read(path)
