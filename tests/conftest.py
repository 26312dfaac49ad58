"""Test-session set-up that must run before TensorFlow executes any op."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from revnet.common.devices import configure_cpu_replicas  # noqa: E402

# Two logical CPU devices, so MirroredStrategy tests run multi-replica synchronous SGD without GPUs.
configure_cpu_replicas(2)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A tiny learnable dataset in the official format (PNG TFRecords + metadata.json): 160 training and 37
    validation images of 4 classes in 2 shards. Tests that need other counts write their own."""
    from revnet.preprocess.fake_data import write_toy_dataset

    path = str(tmp_path_factory.mktemp("toy_data"))
    write_toy_dataset(path, num_train=160, num_validation=37, num_classes=4, num_shards=2, seed=0)
    return path


@pytest.fixture(autouse=True)
def _no_global_tf_seed_leaks():
    """A test that sets TensorFlow's global seed (tf.random.set_seed, keras.utils.set_random_seed) changes every
    later test's random ops and seeds; fail the test that leaks it, not a test far away."""
    import tensorflow as tf
    from tensorflow.python.eager import context

    yield
    if context.global_seed() is not None:
        tf.random.set_seed(None)
        pytest.fail("this test left a global TensorFlow seed set; seed layers or ops, not the whole process")
