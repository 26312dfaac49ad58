"""What the reversible-layer tests share: a user's own coupling (registered once for `.keras` files), the
couplings every test runs, a float64 input and the gradients of a layer."""
import numpy as np
import tensorflow as tf
import keras

from revnet.reversible import Coupling


@keras.saving.register_keras_serializable(package="revnet_tests")
class QuadraticCoupling(Coupling):
    """y = x * (1 + fx**2) + fx."""

    def forward(self, x, fx):
        return x * (1 + fx ** 2) + fx

    def inverse(self, y, fx):
        return (y - fx) / (1 + fx ** 2)


# The two built-in couplings, by name, and the user's.
COUPLINGS = {"additive": "additive", "affine": "affine", "user": QuadraticCoupling()}


def random_input(seed, shape=(5, 8)):
    return tf.constant(np.random.default_rng(seed).normal(size=shape), tf.float64)


def gradients(layer, x, training=None):
    """The gradients of sum(sin(layer(x))) for x and the layer's trainable variables, all dense (as every
    optimizer takes them)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x, training=training)))
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    assert not any(isinstance(g, tf.IndexedSlices) for g in grads)
    return grads
