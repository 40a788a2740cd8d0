"""TensorBoard event files for scalars, written directly: no TensorFlow, tensorboardX or torch to
import (tensorboardX imports torch when it is installed, seconds of start-up for every run).

An event file is a sequence of TFRecords, each

    uint64 length | uint32 masked CRC-32C of length | data[length] | uint32 masked CRC-32C of data

(little-endian), where each data is a serialised `tensorflow.Event` protocol buffer:
wall_time (field 1, double), step (2, int64), file_version (3, string) or summary (5) holding
values (1) of a tag (1, string) and a simple_value (2, float). The first record names the format
("brain.Event:2"). `tensorboard --logdir DIR` reads every `*tfevents*` file under DIR.
"""

import os
import socket
import struct
import time
from pathlib import Path

FILE_VERSION = "brain.Event:2"
_MASK_DELTA = 0xA282EAD8


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecords use it: crc32c(b"123456789") == 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """The CRC a TFRecord stores: CRC-32C rotated right by 15 bits plus a constant (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """`data` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields encode negatives in ten bytes, two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalars: dict[str, float] | None = None) -> bytes:
    """A serialised Event: the file-version header or a summary of `scalars` {tag: value} at `step`."""
    out = bytearray(b"\x09" + struct.pack("<d", wall_time))  # field 1, 64-bit
    if step:
        out += b"\x10" + _varint(int(step))  # field 2, varint
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value)))
            for tag, value in scalars.items())
        out += _length_delimited(5, values)
    return bytes(out)


class EventFileWriter:
    """Appends scalar summaries to a new event file in `folder` (created if missing); each `write`
    reaches the disk before it returns, so a killed run keeps what it logged."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = folder / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.saejax"
        self._file = open(self.path, "ab")
        self._append(event(now, file_version=FILE_VERSION))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Record `scalars` {tag: value} for `step` as one event."""
        if scalars:
            self._append(event(time.time(), step, scalars=scalars))

    def _append(self, data: bytes) -> None:
        self._file.write(record(data))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path: str | Path) -> list[bytes]:
    """The data of every TFRecord in the file at `path`, CRCs checked. ValueError naming the file
    and byte offset of a damaged or cut-off record."""
    blob, records, at = Path(path).read_bytes(), [], 0
    while at < len(blob):
        if at + 12 > len(blob):
            raise ValueError(f"{path}: record header cut off at byte {at}")
        (length,), (length_crc,) = struct.unpack_from("<Q", blob, at), struct.unpack_from("<I", blob, at + 8)
        if masked_crc(blob[at:at + 8]) != length_crc:
            raise ValueError(f"{path}: damaged record length at byte {at}")
        end = at + 12 + length
        if end + 4 > len(blob):
            raise ValueError(f"{path}: record at byte {at} cut off")
        data = blob[at + 12:end]
        if masked_crc(data) != struct.unpack_from("<I", blob, end)[0]:
            raise ValueError(f"{path}: damaged record data at byte {at}")
        records.append(data)
        at = end + 4
    return records
