"""A GGUF file's metadata and tensors in one pass over its header, the tensors left memory-mapped.

    gguf = gguf_file.read("gemma-3-270m-q4_k_m.gguf")
    gguf.metadata["gemma3.block_count"]        # 18 (strings, numbers, lists)
    for tensor in gguf.tensors:                # name, shape, GGML type, the raw bytes
        weights = gguf_file.dequantize(tensor)  # float32 [*shape]

The `gguf` package's own reader builds a numpy view for every field part (a tokenizer of 262k pieces:
~15 s); this one reads the header with `struct` from an mmap (the same file in well under a second)
and uses the package only for its type table and dequantisers. Layout (GGUF v2/v3, little-endian):
magic "GGUF", version u32, tensor count u64, metadata count u64; each metadata entry a string key, a
type u32 and a value (arrays: element type u32, count u64, elements); each tensor a string name,
n_dims u32, dims u64 (fastest first), GGML type u32, offset u64 from the data section, which starts at
the next multiple of `general.alignment` (32 by default). Strings are a u64 length and UTF-8 bytes.
"""

import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from saejax.errors import DataError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# metadata value types -> struct format of one scalar (8: string, 9: array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class Tensor(NamedTuple):
    """One tensor: `shape` in numpy order (slowest axis first); `data` its raw bytes, uint8
    [*shape[:-1], bytes per row], a view of the mapped file."""
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data: np.ndarray


class GGUFFile(NamedTuple):
    metadata: dict[str, Any]
    tensors: list[Tensor]


class _Cursor:
    """Reads little-endian values from `buffer` at a moving offset; DataError past its end."""

    def __init__(self, buffer, path: Path):
        self.buffer, self.path, self.offset = buffer, path, 0

    def unpack(self, fmt: str):
        try:
            values = struct.unpack_from(fmt, self.buffer, self.offset)
        except struct.error:
            raise DataError(f"{self.path}: GGUF header ends early (at byte {self.offset}): a truncated file?") from None
        self.offset += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.offset + length > len(self.buffer):
            raise DataError(f"{self.path}: GGUF string of {length} bytes at byte {self.offset} runs past the end")
        raw = self.buffer[self.offset:self.offset + length]
        self.offset += length
        return bytes(raw).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            element, count = self.unpack("<IQ")
            if element in _SCALARS and element != 7:  # numbers in one view (booleans one by one)
                dtype = np.dtype(_SCALARS[element])
                end = self.offset + count * dtype.itemsize
                if end > len(self.buffer):
                    raise DataError(f"{self.path}: GGUF array of {count} values at byte {self.offset} runs past "
                                    "the end")
                values = np.frombuffer(self.buffer, dtype, count, self.offset).tolist()
                self.offset = end
                return values
            return [self.value(element) for _ in range(count)]
        raise DataError(f"{self.path}: unknown GGUF metadata type {kind} at byte {self.offset - 4}")


def read(path: str | Path) -> GGUFFile:
    """The metadata and tensors of the GGUF file at `path`; DataError for a file that is not GGUF,
    of an unsupported version, truncated, or with a tensor of an unknown type or past the end."""
    from gguf import GGML_QUANT_SIZES  # noqa: PLC0415 (the reader's callers check the package is there)

    path = Path(path)
    with open(path, "rb") as f:
        try:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise DataError(f"{path}: not a GGUF file (empty)") from None
    cursor = _Cursor(buffer, path)
    if bytes(buffer[:4]) != MAGIC:
        raise DataError(f"{path}: not a GGUF file (its first bytes are {bytes(buffer[:4])!r}, not b'GGUF')")
    cursor.offset = 4
    version, n_tensors, n_metadata = cursor.unpack("<IQQ")
    if version not in VERSIONS:
        raise DataError(f"{path}: GGUF version {version}; versions {VERSIONS} are supported")
    metadata = {}
    for _ in range(n_metadata):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.unpack("<I"))
    infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        n_dims = cursor.unpack("<I")
        dims = cursor.unpack(f"<{n_dims}Q") if n_dims else ()
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        infos.append((name, dims, *cursor.unpack("<IQ")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    start = -(-cursor.offset // alignment) * alignment
    tensors = []
    for name, dims, ggml_type, offset in infos:
        if ggml_type not in GGML_QUANT_SIZES:
            raise DataError(f"{path}: tensor {name!r} has GGML type {ggml_type}, which the gguf package does not know")
        block, type_size = GGML_QUANT_SIZES[ggml_type]
        shape = tuple(reversed(dims)) or (1,)
        if shape[-1] % block:
            raise DataError(f"{path}: tensor {name!r} rows of {shape[-1]} values are not whole blocks of {block}")
        row_bytes = shape[-1] // block * type_size
        n_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes
        if start + offset + n_bytes > len(buffer):
            raise DataError(f"{path}: tensor {name!r} runs past the end of the file: a truncated file?")
        data = np.frombuffer(buffer, np.uint8, n_bytes, start + offset).reshape(*shape[:-1], row_bytes)
        tensors.append(Tensor(name, shape, ggml_type, data))
    return GGUFFile(metadata, tensors)


def dequantize(tensor: Tensor) -> np.ndarray:
    """float32 [*tensor.shape]: the tensor's values, dequantised by the `gguf` package."""
    import gguf  # noqa: PLC0415

    try:
        values = gguf.dequantize(tensor.data, tensor.ggml_type)
    except NotImplementedError as e:
        raise DataError(f"tensor {tensor.name!r}: {e}") from None
    return np.asarray(values, np.float32).reshape(tensor.shape)
