import numpy as np
import pytest
import tensorflow as tf
import keras

from revnet.reversible import ReversibleSequence


def _dense(units, seed, **kwargs):
    # Seeded per layer: a global seed (keras.utils.set_random_seed) would leak into every later test.
    return keras.layers.Dense(units, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed),
                              **kwargs)


def _blocks(depth=3, units=4):
    return [(_dense(units, 2 * k, dtype="float64"), _dense(units, 2 * k + 1, dtype="float64")) for k in range(depth)]


def _grads(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(layer(x)))
    return tape.gradient(loss, [x] + layer.trainable_variables)


def test_reversible_gradients_match_autodiff_float64():
    x = tf.constant(np.random.default_rng(0).normal(size=(5, 8)), tf.float64)
    layer = ReversibleSequence(_blocks(), mode="reversible", dtype="float64")
    layer(x)
    reference = _grads(ReversibleSequence(layer.blocks, mode="autodiff", dtype="float64"), x)
    got = _grads(layer, x)
    assert len(got) == len(reference) == 1 + 12
    for a, b in zip(got, reference):
        assert np.max(np.abs(a.numpy() - b.numpy())) <= 1e-10


def test_inverse_rebuilds_input():
    x = tf.constant(np.random.default_rng(1).normal(size=(5, 8)), tf.float64)
    layer = ReversibleSequence(_blocks(), dtype="float64")
    assert np.max(np.abs(layer.inverse(layer(x)).numpy() - x.numpy())) < 1e-12


def test_odd_split_is_a_value_error():
    with pytest.raises(ValueError, match="odd size"):
        ReversibleSequence(_blocks(units=3))(tf.zeros((2, 7)))


def test_model_fit_two_steps_finite_loss():
    blocks = [(_dense(4, 2 * k), _dense(4, 2 * k + 1)) for k in range(2)]
    model = keras.Sequential([keras.Input((8,)), ReversibleSequence(blocks), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    before = blocks[0][0].kernel.numpy().copy()
    history = model.fit(np.ones((4, 8), "float32"), np.zeros((4, 1), "float32"), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert not np.allclose(blocks[0][0].kernel.numpy(), before)   # f's weights received gradients


def test_blocks_whose_recomputation_would_differ_are_refused():
    import keras
    import pytest

    from revnet.reversible import ReversibleSequence

    for stateful in (keras.layers.Dropout(0.1), keras.layers.BatchNormalization()):
        f = keras.Sequential([keras.layers.Dense(2), stateful])
        with pytest.raises(ValueError, match="not supported yet"):
            ReversibleSequence([(f, keras.layers.Dense(2))])
    ReversibleSequence([(keras.Sequential([keras.layers.Dropout(0.1)]), keras.layers.Dense(2))], mode="autodiff")
