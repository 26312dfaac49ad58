import numpy as np
import pytest
import tensorflow as tf
import keras

from revnet.reversible import AdditiveCoupling, AffineCoupling, ReversibleSequence
from testkit.reversible_helpers import COUPLINGS, gradients, random_input


def _dense(units, seed, **kwargs):
    # Seeded per layer: a global seed (keras.utils.set_random_seed) would leak into every later test.
    return keras.layers.Dense(units, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed),
                              **kwargs)


def _blocks(depth=3, units=4, coupling="additive", dtype="float64"):
    """f and g of width `units`, twice that for the affine coupling (s and t)."""
    width = 2 * units if coupling == "affine" else units
    return [(_dense(width, 2 * k, dtype=dtype), _dense(width, 2 * k + 1, dtype=dtype)) for k in range(depth)]


def _max_difference(got, reference):
    assert len(got) == len(reference)
    return max(np.max(np.abs(np.asarray(a) - np.asarray(b))) for a, b in zip(got, reference, strict=True))


@pytest.mark.parametrize("mode", ["reversible", "recompute"])
@pytest.mark.parametrize("coupling", COUPLINGS)
def test_gradients_match_autodiff_float64(coupling, mode):
    x = random_input(0)
    layer = ReversibleSequence(_blocks(coupling=coupling), coupling=COUPLINGS[coupling], mode=mode, dtype="float64")
    layer(x)
    reference = gradients(ReversibleSequence(layer.blocks, coupling=COUPLINGS[coupling], mode="autodiff",
                                          dtype="float64"), x)
    got = gradients(layer, x)
    assert len(got) == 1 + 12
    assert _max_difference(got, reference) <= 1e-10


class _Spy(keras.layers.Layer):
    """Its inner layer, counting the calls and keeping the outputs."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner, self.calls, self.outputs = inner, 0, []

    def call(self, x):
        self.calls += 1
        self.outputs.append(self.inner(x))
        return self.outputs[-1]


def _spied(mode):
    x = random_input(0)
    blocks = [tuple(_Spy(fn, dtype="float64") for fn in pair) for pair in _blocks(depth=2)]
    layer = ReversibleSequence(blocks, mode=mode, dtype="float64")
    layer(x)
    spies = [fn for pair in blocks for fn in pair]
    for spy in spies:
        spy.calls, spy.outputs = 0, []
    return x, layer, spies


@pytest.mark.parametrize("mode,calls", [("autodiff", 1), ("reversible", 2), ("recompute", 2)])
def test_rerunning_modes_run_each_layer_again_in_the_backward_pass(mode, calls):
    x, layer, spies = _spied(mode)
    gradients(layer, x)
    assert [spy.calls for spy in spies] == [calls] * 4


@pytest.mark.parametrize("mode,taped", [("autodiff", True), ("reversible", False), ("recompute", False)])
def test_rerunning_modes_leave_no_forward_activation_on_the_tape(mode, taped):
    x, layer, spies = _spied(mode)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        layer(x)
    assert [tape.gradient(spy.outputs[0], x) is not None for spy in spies] == [taped] * 4


def _noisy_blocks(depth=2, units=4):
    """f with Dropout, g with GaussianNoise, every seed explicit."""
    def f(k):
        return keras.Sequential([_dense(units, 2 * k, dtype="float64"),
                                 keras.layers.Dropout(0.5, seed=10 + k, dtype="float64")])

    def g(k):
        return keras.Sequential([_dense(units, 2 * k + 1, dtype="float64"),
                                 keras.layers.GaussianNoise(0.3, seed=20 + k, dtype="float64")])

    return [(f(k), g(k)) for k in range(depth)]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_dropout_gradients_match_autodiff_with_the_same_masks(mode, graph):
    x = random_input(3)
    blocks = _noisy_blocks()
    layers = {name: ReversibleSequence(blocks, mode=name, dtype="float64") for name in ("autodiff", mode)}
    layers[mode](x)
    seeds = layers[mode].non_trainable_variables
    assert len(seeds) == 4   # one seed-generator state per noise layer
    start = [v.numpy() for v in seeds]

    def step(layer):
        for v, value in zip(seeds, start, strict=True):
            v.assign(value)       # the same seed-generator states, so the same masks, in both modes
        grads = (tf.function(gradients) if graph else gradients)(layer, x, training=True)
        return grads, [v.numpy() for v in seeds]

    reference, reference_seeds = step(layers["autodiff"])
    got, got_seeds = step(layers[mode])
    assert _max_difference(reference_seeds, start) > 0   # masks were drawn
    assert _max_difference(got_seeds, reference_seeds) == 0   # and the states are left as the forward pass left them
    assert _max_difference(got, reference) <= 1e-10


def _bn_blocks():
    return [tuple(keras.Sequential([_dense(4, k, dtype="float64"),
                                    keras.layers.BatchNormalization(momentum=0.5, dtype="float64")]) for k in (0, 1))]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_batch_norm_statistics_move_once_per_step(mode, graph):
    x = random_input(4, shape=(6, 8))
    stats, grads = {}, {}
    for name in ("autodiff", mode):
        layer = ReversibleSequence(_bn_blocks(), mode=name, dtype="float64")   # identical weights in both
        layer(x)
        grads[name] = (tf.function(gradients) if graph else gradients)(layer, x, training=True)
        stats[name] = [v.numpy() for v in layer.non_trainable_variables]
    assert len(stats[mode]) == 4   # moving mean and variance of each BatchNormalization
    assert _max_difference(stats["autodiff"], [np.zeros(4), np.ones(4)] * 2) > 0.01   # the statistics moved
    assert _max_difference(stats[mode], stats["autodiff"]) <= 1e-12
    assert _max_difference(grads[mode], grads["autodiff"]) <= 1e-10


@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_noise_and_statistics_shared_by_blocks_end_as_in_autodiff(mode):
    """One Dropout and one BatchNormalization in every block: re-running an early block must not undo what the
    later blocks' forward calls did to their seed-generator state and moving statistics."""
    dropout = keras.layers.Dropout(0.5, seed=7, dtype="float64")
    norm = keras.layers.BatchNormalization(momentum=0.5, dtype="float64")
    blocks = [(keras.Sequential([_dense(4, 2 * k, dtype="float64"), dropout]),
               keras.Sequential([_dense(4, 2 * k + 1, dtype="float64"), norm])) for k in range(2)]
    x = random_input(6, shape=(6, 8))
    layers = {name: ReversibleSequence(blocks, mode=name, dtype="float64") for name in ("autodiff", mode)}
    layers[mode](x)
    state = layers[mode].non_trainable_variables
    assert len(state) == 3   # the seed-generator state, the moving mean and variance
    start = [v.numpy() for v in state]
    grads, after = {}, {}
    for name, layer in layers.items():
        for v, value in zip(state, start, strict=True):
            v.assign(value)
        grads[name] = gradients(layer, x, training=True)
        after[name] = [v.numpy() for v in state]
    assert _max_difference(after["autodiff"], start) > 0.01
    assert _max_difference(after[mode], after["autodiff"]) <= 1e-12
    assert _max_difference(grads[mode], grads["autodiff"]) <= 1e-10


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_inverse_rebuilds_input(coupling):
    x = random_input(1)
    layer = ReversibleSequence(_blocks(coupling=coupling), coupling=COUPLINGS[coupling], dtype="float64")
    y = layer(x)
    assert _max_difference([y], [x]) > 0.1
    assert _max_difference([layer.inverse(y)], [x]) < 1e-12


def test_unknown_mode_or_coupling_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="'reversible', 'autodiff', 'recompute'"):
        ReversibleSequence(_blocks(), mode="checkpoint")
    for coupling in ("multiplicative", AdditiveCoupling):
        with pytest.raises(ValueError, match="'additive', 'affine' or a Coupling instance"):
            ReversibleSequence(_blocks(), coupling=coupling)


def test_blocks_must_be_pairs_of_keras_layers():
    with pytest.raises(TypeError, match="pair"):
        ReversibleSequence([(tf.identity, keras.layers.Dense(2))])
    with pytest.raises(TypeError, match="pair"):
        ReversibleSequence([(keras.layers.Dense(2),)])


def test_odd_split_is_a_value_error():
    with pytest.raises(ValueError, match="odd size"):
        ReversibleSequence(_blocks(units=3))(tf.zeros((2, 7)))


def test_affine_f_of_the_wrong_width_is_a_value_error():
    with pytest.raises(ValueError, match="twice"):
        ReversibleSequence(_blocks(coupling="additive"), coupling="affine", dtype="float64")(random_input(0))


@pytest.mark.parametrize("coupling", COUPLINGS)
def test_keras_file_round_trip(coupling, tmp_path):
    layer = ReversibleSequence(_blocks(depth=2, coupling=coupling, dtype="float32"), coupling=COUPLINGS[coupling],
                               mode="recompute", split_axis=1)
    model = keras.Sequential([keras.Input((8,)), layer, keras.layers.Dense(1)])
    rng = np.random.default_rng(5)
    # Weights no seeded initializer would recreate: only loading them can restore them.
    for v in [v for pair in layer.blocks for fn in pair for v in fn.weights] + model.layers[-1].weights:
        v.assign(rng.normal(size=v.shape).astype(v.dtype))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    x = rng.normal(size=(3, 8)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    again = loaded.layers[0]
    assert (type(again), type(again.coupling), again.mode, again.split_axis) == (
        ReversibleSequence, type(layer.coupling), "recompute", 1)
    if coupling == "affine":
        assert isinstance(again.coupling, AffineCoupling) and again.coupling.axis == 1


@pytest.mark.parametrize("mode", ["reversible", "recompute"])
def test_model_fit_two_steps_finite_loss(mode):
    blocks = [(keras.Sequential([_dense(4, 2 * k), keras.layers.Dropout(0.2, seed=k)]),
               keras.Sequential([_dense(4, 2 * k + 1), keras.layers.BatchNormalization()])) for k in range(2)]
    model = keras.Sequential([keras.Input((8,)), ReversibleSequence(blocks, mode=mode), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    before = blocks[0][0].layers[0].kernel.numpy().copy()
    history = model.fit(np.ones((4, 8), "float32"), np.zeros((4, 1), "float32"), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert not np.allclose(blocks[0][0].layers[0].kernel.numpy(), before)   # f's weights received gradients
