"""Shared by the pipeline tests (a uniquely named module: several test folders have a conftest.py)."""
import os

import tensorflow as tf

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ALL_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string), "image/format": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64), "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/channels": tf.io.FixedLenFeature([], tf.int64), "image/colorspace": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string), "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/text": tf.io.FixedLenFeature([], tf.string),
    "image/class/synset": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/coarse_label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def read_records(data_dir, split):
    """Every record of a split as a dict of Python values, shard by shard in order."""
    import json

    metadata = json.load(open(os.path.join(data_dir, "metadata.json")))
    records = []
    for shard in metadata["splits"][split]["shards"]:
        for serialized in tf.data.TFRecordDataset(os.path.join(data_dir, shard["file"])):
            parsed = tf.io.parse_single_example(serialized, ALL_FEATURES)
            record = {k: v.numpy() for k, v in parsed.items()}
            record["shard"] = shard["file"]
            records.append(record)
    return records
