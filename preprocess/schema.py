"""The TFRecord schema (the one TF's own ImageNet tooling uses) and the dataset folder layout.

A dataset folder written by `pipeline/` holds exactly (docs/data.md describes every field):
    train-SSSSS-of-NNNNN.tfrecord, validation-SSSSS-of-NNNNN.tfrecord (and test-... for a folder dataset
                    with a test/ folder or test rows in its manifest)
    rejects.jsonl   one {"path", "split", "reason"} per rejected input, sorted
    metadata.json   written last; its presence with "complete": true marks a finished dataset:
        {"dataset": "cifar-10" | "cifar-100" | "imagenet" | "folder",
         "num_classes": int, "label_names": [str] (label k - label_offset names class k),
         "synsets": [str] | null (ImageNet only), "coarse_label_names": [str] (cifar-100 only),
         "label_offset": int, "label": "fine" | "coarse" | null (cifar-100 only),
         "image_size": 32 | 224: the square input the dataset is prepared for (training, evaluation, serving),
         "model_family": "cifar" | "imagenet": the models it fits, and so "augmentation" ("cifar": pad 4,
                         crop, flip; "imagenet": random-resized crop, flip) and evaluation "preprocessing",
         "image_format": "PNG" (32x32 exactly) | "JPEG" (each image its own size),
         "pixel_mean": [32][32][3] floats: the mean raw 0..255 value of each pixel and channel over the
                       written training records (float64); null for the imagenet family (whose models
                       normalise with (x/255 - 0.5) * 2) and for an empty training split,
         "splits": {"train": {"read", "written", "rejected", "skipped": int, "converted": {kind: int},
                              "class_counts": [int per class], "shards": [{"file", "records"}]},
                    "validation": {...}, ["test": {...}]},   read = written + rejected + skipped
         "layout": "classes" | "splits" | "manifest", "skipped": {reason: {"count", "examples"}},
         "duplicates": {"count", "pairs": [[path, path]]} (folder datasets only),
         "options": the resolved PreprocessConfig, "execution": {"runner", "beam_args"},
         "seconds": float (pipeline wall time), "complete": true}

The feature keys and folder names are defined in preprocess/tfrecord.py (TensorFlow-free, for workers).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import tensorflow as tf

from revnet.common.errors import UserError
from revnet.common.fileio import read_json
from revnet.preprocess.tfrecord import (  # noqa: F401 - the keys and names are defined once, there
    CHANNELS, COARSE_LABEL, COLORSPACE, ENCODED, FILENAME, FORMAT, HEIGHT, LABEL, METADATA_FILE, REJECTS_FILE,
    SPLITS, SYNSET, TEXT, WIDTH, shard_name)


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(encoded: bytes, image_format: str, height: int, width: int, filename: str, label: int,
                 text: str, synset: Optional[str] = None, coarse_label: Optional[int] = None) -> tf.train.Example:
    """One record. `image_format` is "JPEG" or "PNG"; images are always 3-channel RGB."""
    feature = {
        ENCODED: _bytes(encoded), FORMAT: _bytes(image_format.encode()), HEIGHT: _int(height),
        WIDTH: _int(width), CHANNELS: _int(3), COLORSPACE: _bytes(b"RGB"),
        FILENAME: _bytes(filename.encode()), LABEL: _int(label), TEXT: _bytes(text.encode()),
    }
    if synset is not None:
        feature[SYNSET] = _bytes(synset.encode())
    if coarse_label is not None:
        feature[COARSE_LABEL] = _int(coarse_label)
    return tf.train.Example(features=tf.train.Features(feature=feature))


FEATURE_SPEC = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="JPEG"),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized) -> Dict[str, tf.Tensor]:
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


def load_metadata(data_dir: str) -> Dict:
    """Read a finished dataset's metadata.json, or raise a UserError saying what is missing."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not os.path.isdir(data_dir):
        raise UserError(f"data folder {data_dir!r} does not exist; run `python cli.py preprocess` first")
    if not os.path.exists(path):
        raise UserError(f"{data_dir!r} has no {METADATA_FILE}; it is not a finished dataset from `cli.py preprocess`")
    try:
        metadata = read_json(path)
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error})") from None
    if not metadata.get("complete"):
        raise UserError(f"{path} does not mark the dataset complete; re-run `cli.py preprocess`")
    return metadata


def split_files(data_dir: str, metadata: Dict, split: str):
    """The shard paths of one split, checked to exist."""
    if split not in metadata.get("splits", {}):
        raise UserError(f"dataset {data_dir!r} has no split {split!r}; it has: {', '.join(metadata['splits'])}")
    files = [os.path.join(data_dir, shard["file"]) for shard in metadata["splits"][split]["shards"]]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        raise UserError(f"dataset {data_dir!r} is missing {len(missing)} shard file(s), e.g. {missing[0]}")
    return files
