"""saejax.tensorboard's event files, read back through TensorBoard's own protocol buffers (as
tensorboardX ships them) and checked byte for byte against tensorboardX's record framing."""


import pytest

from saejax import tensorboard, writers

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def test_crc32c_known_value():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283
    assert tensorboard.crc32c(b"") == 0


def test_record_framing_matches_tensorboardx(tmp_path):
    from tensorboardX.record_writer import RecordWriter  # noqa: PLC0415

    payloads = (b"", b"x", bytes(range(256)) * 3)
    reference = RecordWriter(str(tmp_path / "reference"))
    for payload in payloads:
        reference.write(payload)
    reference.close()
    assert b"".join(tensorboard.record(p) for p in payloads) == (tmp_path / "reference").read_bytes()


def test_events_parse_as_tensorflow_events(tmp_path):
    writer = tensorboard.EventFileWriter(tmp_path / "tb")
    writer.write(0, {"train/loss": 1.5})
    writer.write(7, {"train/loss": 0.25, "train/l0": 32.0})
    writer.write(2**40, {"eval/fvu": -3.0e-8})
    writer.close()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = [event_pb2.Event.FromString(data) for data in tensorboard.read_records(path)]
    assert events[0].file_version == "brain.Event:2" and events[0].wall_time > 1e9
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert scalars == [(0, "train/loss", 1.5), (7, "train/loss", 0.25), (7, "train/l0", 32.0),
                       (2**40, "eval/fvu", pytest.approx(-3.0e-8))]


def test_damaged_record_is_named(tmp_path):
    writer = tensorboard.EventFileWriter(tmp_path)
    writer.write(3, {"loss": 1.0})
    writer.close()
    blob = bytearray(writer.path.read_bytes())
    blob[-6] ^= 0xFF
    writer.path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"damaged record data at byte \d+"):
        tensorboard.read_records(writer.path)
    writer.path.write_bytes(bytes(blob[:-3]))
    with pytest.raises(ValueError, match="cut off"):
        tensorboard.read_records(writer.path)


def test_metric_writer_mirrors_scalars(tmp_path):
    writer = writers.MetricWriter(tmp_path, total_steps=10, progress=False)
    writer.write(5, {"loss": 2.0, "l0": 12.0})
    writer.write(10, {"fvu": 0.5}, split="eval")
    writer.close()
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    events = [event_pb2.Event.FromString(data) for data in tensorboard.read_records(path)]
    assert [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value] == [
        (5, "train/loss", 2.0), (5, "train/l0", 12.0), (10, "eval/fvu", 0.5)]
