"""The TensorFlow-free Example encoder and TFRecord writer match TensorFlow byte for byte."""
import tensorflow as tf

from revnet.preprocess import schema, tfrecord


def test_examples_are_byte_identical_to_tensorflow():
    cases = [(b"\x89PNG" + bytes(range(256)) * 3, "PNG", 32, 32, "cat_s_000001.png", 7, "cat", None, 3),
             (b"\xff\xd8\xff", "JPEG", 375, 500, "n01440764_10026.JPEG", 1000, "tench, Tinca tinca", "n01440764",
              None),
             (b"", "JPEG", 1, 1, "", 0, "", "", 0)]
    for case in cases:
        assert tfrecord.image_example(*case) == schema.make_example(*case).SerializeToString(deterministic=True)


def test_tfrecord_files_are_byte_identical_and_readable(tmp_path):
    records = [b"first", b"", b"x" * 70000]
    ours = tmp_path / "ours.tfrecord"
    with open(ours, "wb") as handle:
        for record in records:
            tfrecord.write_record(handle, record)
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for record in records:
            writer.write(record)
    assert ours.read_bytes() == theirs.read_bytes()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records
