"""TensorBoard scalars without the `tensorboard` package (TF 2.21 does not install it).

`tf.summary.scalar` is a thin wrapper that lives in `tensorboard`; the event-file writer itself is
core TensorFlow, so we write the same record: a float32 tensor tagged with the "scalars" plugin.
TensorBoard (installed anywhere) reads these files as ordinary scalar summaries.
"""
from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()


def scalar(name: str, value, step: int) -> None:
    """Write one scalar to the default summary writer (a no-op without one)."""
    tf.summary.write(name, tf.constant(float(value), tf.float32), step=int(step), metadata=_SCALAR_METADATA)


def read_scalars(event_dir: str):
    """{tag: [(step, value), ...]} from the event files in `event_dir` (for tests and reports)."""
    import glob

    scalars = {}
    for path in sorted(glob.glob(f"{event_dir}/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else value.simple_value
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars
