import pytest
import tensorflow as tf


@pytest.fixture(scope="module")
def small_batch():
    """A small batch of smooth, image-like inputs (0..255) and labels."""
    base = tf.random.stateless_uniform([4, 4, 4, 3], [11, 12], 0, 255)
    images = tf.image.resize(base, [16, 16], method="bilinear")
    labels = tf.constant([0, 1, 2, 3])
    return images, labels
