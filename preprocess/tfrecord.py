"""The record format without TensorFlow: feature keys, dataset folder names, Example encoding, TFRecords.

Beam worker processes only decode and encode images; importing TensorFlow in each of them costs
several seconds per worker and about 600 MB of memory. The bytes produced here are identical to
`schema.make_example(...).SerializeToString(deterministic=True)` written by `tf.io.TFRecordWriter`
(tests/preprocess/test_tfrecord.py checks both). The keys and names are defined here once;
preprocess/schema.py (the TensorFlow side) imports them.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Dict, Optional, Union

import google_crc32c

SPLITS = ("train", "validation")
METADATA_FILE = "metadata.json"
REJECTS_FILE = "rejects.jsonl"

ENCODED, FORMAT, HEIGHT, WIDTH = "image/encoded", "image/format", "image/height", "image/width"
CHANNELS, COLORSPACE, FILENAME = "image/channels", "image/colorspace", "image/filename"
LABEL, SYNSET, TEXT, COARSE_LABEL = "image/class/label", "image/class/synset", "image/class/text", \
    "image/class/coarse_label"


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 values are 10-byte two's complement varints
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def _feature(value: Union[bytes, int]) -> bytes:
    if isinstance(value, bytes):  # Feature.bytes_list (1) -> BytesList.value (1)
        return _length_delimited(1, _length_delimited(1, value))
    # Feature.int64_list (3) -> Int64List.value (1), packed
    return _length_delimited(3, _length_delimited(1, _varint(int(value))))


def encode_example(features: Dict[str, Union[bytes, int]]) -> bytes:
    """A serialized tf.train.Example of single-value bytes/int64 features, map keys sorted (deterministic)."""
    entries = b"".join(
        _length_delimited(1, _length_delimited(1, key.encode("utf-8")) + _length_delimited(2, _feature(value)))
        for key, value in sorted(features.items()))
    return _length_delimited(1, entries)  # Example.features (1) -> Features.feature map entries (1)


def image_example(encoded: bytes, image_format: str, height: int, width: int, filename: str, label: int,
                  text: str, synset: Optional[str] = None, coarse_label: Optional[int] = None) -> bytes:
    """The same record as schema.make_example, serialized."""
    features: Dict[str, Union[bytes, int]] = {
        ENCODED: encoded, FORMAT: image_format.encode(), HEIGHT: int(height), WIDTH: int(width), CHANNELS: 3,
        COLORSPACE: b"RGB", FILENAME: filename.encode(), LABEL: int(label), TEXT: text.encode(),
    }
    if synset is not None:
        features[SYNSET] = synset.encode()
    if coarse_label is not None:
        features[COARSE_LABEL] = int(coarse_label)
    return encode_example(features)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_record(handle: BinaryIO, record: bytes) -> None:
    """One TFRecord: length, masked CRC32C of the length, data, masked CRC32C of the data."""
    length = struct.pack("<Q", len(record))
    handle.write(length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record)))
