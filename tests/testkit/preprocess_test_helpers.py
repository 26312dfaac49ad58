"""Shared by the pipeline tests (a uniquely named module: several test folders have a conftest.py)."""
import os

import tensorflow as tf

FOLDER_CLASSES = ["cat", "dog house", "Zoë 猫"]  # any Unicode, spaces included
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


def dataset_files(folder):
    """{file name: bytes} of every file a dataset folder holds except metadata.json (which records timings)."""
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))
            if name != "metadata.json"}


def kill_worker_plugin(marker_path, after_tasks):
    """A dask WorkerPlugin that SIGKILLs its worker process when the worker starts its task number
    `after_tasks + 1`, once per `marker_path` (restarted workers receive the plugin again)."""
    from distributed import WorkerPlugin

    class KillWorker(WorkerPlugin):
        def setup(self, worker):
            self.started = 0

        def transition(self, key, start, finish, **kwargs):
            if finish != "executing":
                return
            self.started += 1
            if self.started > after_tasks and not os.path.exists(marker_path):
                open(marker_path, "w").close()
                os.kill(os.getpid(), 9)

    return KillWorker()
