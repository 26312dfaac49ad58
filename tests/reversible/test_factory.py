"""The factory form, ReversibleSequence.from_factory: N blocks from make_block() as a tf.while_loop over stacked
weights. Small shapes and few blocks, float64 where gradients are compared."""
import itertools

import numpy as np
import pytest
import tensorflow as tf
import keras

from revnet.reversible import ReversibleSequence, StackedReversibleSequence
from testkit.reversible_helpers import COUPLINGS, gradients, random_input


def _factory(units=4, coupling="additive", dtype="float64", dropout=False, batch_norm=False, conv=False):
    """make_block() for (f, g) Dense (or Conv2D) stacks, every seed explicit and different per call: the n-th
    call of two factories made alike returns the same layers, so a list form can be built to match."""
    seeds = itertools.count(1)
    width = 2 * units if coupling == "affine" else units

    def half():
        init = keras.initializers.GlorotUniform(next(seeds))
        if conv:
            layers = [keras.layers.Conv2D(width, 3, padding="same", activation="tanh", kernel_initializer=init,
                                          dtype=dtype)]
        else:
            layers = [keras.layers.Dense(width, activation="tanh", kernel_initializer=init, dtype=dtype)]
        if dropout:
            layers += [keras.layers.Dropout(0.5, seed=next(seeds), dtype=dtype),
                       keras.layers.GaussianNoise(0.3, seed=next(seeds), dtype=dtype)]
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(momentum=0.5, dtype=dtype))
        return keras.Sequential(layers)

    def make_block():
        return half(), half()

    return make_block


def _max_difference(got, reference):
    assert len(got) == len(reference)
    return max(np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(got, reference, strict=True))


def _pair(mode, depth=3, x=None, **factory):
    """The factory form in `mode` and in "autodiff" with the same weights and state."""
    x = random_input(0) if x is None else x
    layers = {name: ReversibleSequence.from_factory(_factory(**factory), depth, coupling=COUPLINGS[
        factory.get("coupling", "additive")], mode=name, dtype="float64") for name in ("autodiff", mode)}
    for layer in layers.values():
        layer(x)
    for a, b in zip(layers["autodiff"].variables, layers[mode].variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())   # the factories made identical weights
    return layers


@pytest.mark.parametrize("mode", ["reversible", "recompute"])
@pytest.mark.parametrize("coupling", COUPLINGS)
def test_gradients_match_autodiff_float64(coupling, mode):
    x = random_input(0)
    layers = _pair(mode, x=x, coupling=coupling)
    reference, got = gradients(layers["autodiff"], x), gradients(layers[mode], x)
    assert len(got) == 1 + 4   # x, then f's and g's kernel and bias, each stacked over the 3 blocks
    assert got[1].shape == (3, 4, 8 if coupling == "affine" else 4)
    assert _max_difference(got, reference) <= 1e-10
    assert min(np.max(np.abs(g.numpy())) for g in got) > 1e-3   # every gradient is there, none left at zero


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_conv_blocks_gradients_match_autodiff_float64(coupling):
    x = random_input(1, shape=(2, 5, 5, 4))
    layers = _pair("reversible", depth=2, x=x, units=2, coupling=coupling, conv=True)
    assert _max_difference(gradients(layers["reversible"], x), gradients(layers["autodiff"], x)) <= 1e-10


@pytest.mark.parametrize("mode", ["reversible", "autodiff"])
def test_factory_form_equals_the_list_form_of_the_same_blocks(mode):
    """The n-th block of the loop is the n-th make_block() pair: same output, and the stacked gradient's slice n is
    the gradient of block n's weights in the list form."""
    x = random_input(2)
    make_block = _factory(dropout=True, batch_norm=True)
    listed = ReversibleSequence([make_block() for _ in range(3)], mode="autodiff", dtype="float64")
    stacked = ReversibleSequence.from_factory(_factory(dropout=True, batch_norm=True), 3, mode=mode, dtype="float64")
    np.testing.assert_array_equal(listed(x).numpy(), stacked(x).numpy())   # inference mode
    reference, got = gradients(listed, x, training=True), gradients(stacked, x, training=True)
    n = len(stacked.trainable_variables)   # f's and g's kernel, bias, gamma, beta
    per_block = [tf.stack([reference[1 + k + n * block] for block in range(3)]) for k in range(n)]
    assert _max_difference(got, reference[:1] + per_block) <= 1e-10
    state = [v.numpy() for v in stacked.non_trainable_variables]
    by_block = [np.stack([v.numpy() for v in listed.non_trainable_variables[k::len(state)]]) for k in range(len(state))]
    assert _max_difference(state, by_block) <= 1e-12   # moving statistics and seed states, block by block


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_dropout_gradients_match_autodiff_with_the_same_masks(mode, graph):
    x = random_input(3)
    layers = _pair(mode, depth=2, x=x, dropout=True)
    seeds = layers[mode].non_trainable_variables
    assert [v.shape for v in seeds] == [(2, 2)] * 4   # Dropout's and GaussianNoise's seed state in f and g, per block
    start = [v.numpy() for v in seeds]
    grads, after = {}, {}
    for name, layer in layers.items():
        grads[name] = (tf.function(gradients) if graph else gradients)(layer, x, training=True)
        after[name] = [v.numpy() for v in layer.non_trainable_variables]
    assert _max_difference(after["autodiff"], start) > 0   # masks were drawn
    assert _max_difference(after[mode], after["autodiff"]) == 0   # the state moved once, as in autodiff
    assert _max_difference(grads[mode], grads["autodiff"]) <= 1e-10
    without = gradients(layers[mode], x)   # inference: no masks, other gradients
    assert _max_difference(without, grads[mode]) > 0.1


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_batch_norm_statistics_move_once_per_step(mode, graph):
    x = random_input(4, shape=(6, 8))
    layers = _pair(mode, depth=2, x=x, batch_norm=True)
    stats, grads = {}, {}
    for name, layer in layers.items():
        grads[name] = (tf.function(gradients) if graph else gradients)(layer, x, training=True)
        stats[name] = [v.numpy() for v in layer.non_trainable_variables]
    assert [s.shape for s in stats[mode]] == [(2, 4)] * 4   # moving mean and variance of f's and g's BN, per block
    assert _max_difference(stats["autodiff"], [np.zeros((2, 4)), np.ones((2, 4))] * 2) > 0.01   # they moved
    assert _max_difference(stats[mode], stats["autodiff"]) <= 1e-12
    assert _max_difference(grads[mode], grads["autodiff"]) <= 1e-10


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_inverse_rebuilds_input(coupling):
    x = random_input(5)
    layer = ReversibleSequence.from_factory(_factory(coupling=coupling), 4, coupling=COUPLINGS[coupling],
                                            dtype="float64")
    y = layer(x)
    assert _max_difference([y], [x]) > 0.1
    assert _max_difference([layer.inverse(y)], [x]) <= 1e-10


def _ops(concrete):
    graph = concrete.graph.as_graph_def()
    ops = [node.op for node in graph.node] + [node.op for fn in graph.library.function for node in fn.node_def]
    return len(ops), ops


def test_runs_a_while_loop_whose_graph_does_not_grow_with_depth():
    x = random_input(6)
    sizes = {}
    for depth in (2, 16):
        layer = ReversibleSequence.from_factory(_factory(dropout=True, batch_norm=True), depth, dtype="float64")
        layer(x)
        sizes[depth], ops = _ops(tf.function(gradients).get_concrete_function(layer, x, training=True))
        assert ops.count("While") + ops.count("StatelessWhile") == 2   # the forward loop and the backward loop
        # f's and g's Dense once each in the forward body; in the backward body, re-run and the two gradient
        # products each: 8, whatever the depth (an unrolled stack of 16 blocks would have 16 times as many).
        assert ops.count("MatMul") == 8
    assert sizes[2] == sizes[16]


@pytest.mark.parametrize("mode", ["reversible", "autodiff"])
def test_keras_file_round_trip(mode, tmp_path):
    layer = ReversibleSequence.from_factory(_factory(coupling="affine", dtype="float32", dropout=True,
                                                     batch_norm=True), 3, coupling="affine", mode=mode, split_axis=1)
    model = keras.Sequential([keras.Input((8,)), layer, keras.layers.Dense(1)])
    rng = np.random.default_rng(7)
    for v in layer.trainable_variables + model.layers[-1].weights:   # values no initializer would recreate
        v.assign(0.5 * rng.normal(size=v.shape).astype(v.dtype))
    x = rng.normal(size=(4, 8)).astype("float32")
    model(x, training=True)   # moves the moving statistics and the seed states away from their initial values
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    again = loaded.layers[0]
    assert (type(again), again.num_blocks, again.mode, again.split_axis, again.coupling.axis) == (
        StackedReversibleSequence, 3, mode, 1, 1)
    assert _max_difference([v.numpy() for v in again.variables], [v.numpy() for v in layer.variables]) == 0
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    np.testing.assert_array_equal(loaded(x, training=True).numpy(), model(x, training=True).numpy())   # same masks


def test_model_fit_two_steps_finite_loss():
    layer = ReversibleSequence.from_factory(_factory(dtype="float32", dropout=True, batch_norm=True), 2)
    model = keras.Sequential([keras.Input((8,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    before = [v.numpy().copy() for v in layer.trainable_variables]
    history = model.fit(np.ones((4, 8), "float32"), np.zeros((4, 1), "float32"), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert all(not np.allclose(v.numpy(), b) for v, b in zip(layer.trainable_variables, before, strict=True))


def test_unsupported_blocks_are_errors_at_construction():
    with pytest.raises(ValueError, match="'dense_reg'.*kernel_regularizer.*not supported in the factory form"):
        ReversibleSequence.from_factory(lambda: (keras.layers.Dense(2, kernel_regularizer="l2", name="dense_reg"),
                                                 keras.layers.Dense(2)), 2)
    with pytest.raises(ValueError, match="kernel_constraint"):
        ReversibleSequence.from_factory(lambda: (keras.Sequential([keras.layers.Dense(2, kernel_constraint="non_neg")]),
                                                 keras.layers.Dense(2)), 2)
    dense = keras.layers.Dense(2)
    with pytest.raises(ValueError, match="same layer as f and g"):
        ReversibleSequence.from_factory(lambda: (dense, dense), 2)
    shared = ReversibleSequence.from_factory(lambda: (dense, keras.layers.Dense(2)), 2)
    with pytest.raises(ValueError, match="new layers on each call"):
        shared(tf.zeros((1, 4)))
    with pytest.raises(TypeError, match="pair"):
        ReversibleSequence.from_factory(lambda: keras.layers.Dense(2), 2)
    with pytest.raises(ValueError, match="num_blocks"):
        ReversibleSequence.from_factory(lambda: (keras.layers.Dense(2), keras.layers.Dense(2)), 0)
    with pytest.raises(ValueError, match="'reversible', 'autodiff', 'recompute'"):
        ReversibleSequence.from_factory(lambda: (keras.layers.Dense(2), keras.layers.Dense(2)), 2, mode="checkpoint")
    with pytest.raises(ValueError, match="odd size"):
        ReversibleSequence.from_factory(lambda: (keras.layers.Dense(2), keras.layers.Dense(2)), 2)(tf.zeros((1, 5)))
