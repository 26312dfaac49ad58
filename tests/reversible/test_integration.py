"""ReversibleSequence inside the machinery a user trains and ships with: a tf.distribute strategy over two
logical CPUs, Keras mixed precision (bf16, and fp16 with its loss scale), and export to a SavedModel and
to ONNX (tf2onnx, run by ONNX Runtime)."""
import numpy as np
import pytest
import tensorflow as tf
import keras

from revnet.reversible import ReversibleSequence

WIDTH = 8   # the layer's input; each half is 4 wide


def _model(mode, dtype="float32", seed=0, batch_norm=True):
    """Dense f and g, with BatchNormalization in g, then a Dense head: the shape of a user's network."""
    def dense(k):
        return keras.layers.Dense(WIDTH // 2, activation="tanh", dtype=dtype,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed + k))

    def g(k):
        return keras.Sequential([dense(k), keras.layers.BatchNormalization(dtype=dtype)]) if batch_norm else dense(k)
    blocks = [(dense(2 * k), g(2 * k + 1)) for k in range(3)]
    head = keras.layers.Dense(3, dtype=dtype, kernel_initializer=keras.initializers.GlorotUniform(seed + 9))
    return keras.Sequential([keras.Input((WIDTH,), dtype=dtype), ReversibleSequence(blocks, mode=mode, dtype=dtype),
                             head])


def _data(dtype="float32", rows=8):
    rng = np.random.default_rng(3)
    return rng.normal(size=(rows, WIDTH)).astype(dtype), rng.integers(0, 3, rows)


def _fit_one_step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return [v.numpy() for v in model.weights]


def _mirrored_step(mode, start, x, y, batch_norm):
    # Reduced on one device: collective all-reduce keys its instances per process, and a second strategy in
    # the same process over variables of other shapes aborts ("Shape mismatch in the collective instance").
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = _model(mode, "float64", batch_norm=batch_norm)
        for variable, value in zip(model.weights, start, strict=True):
            variable.assign(value)
        return _fit_one_step(model, x, y)


def _assert_same(got, expected):
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_two_mirrored_replicas_train_as_autodiff_on_one_device_float64():
    """One SGD step of the reversible layer under MirroredStrategy (2 logical CPUs, 4 rows each) equals one
    step of autodiff on one device over the same 8 rows: the replicas' gradients are summed exactly."""
    x, y = _data("float64")
    reference = _model("autodiff", "float64", batch_norm=False)
    start = [v.numpy() for v in reference.weights]
    expected = _fit_one_step(reference, x, y)
    assert all(not np.array_equal(a, b) for a, b in zip(expected, start, strict=True))
    _assert_same(_mirrored_step("reversible", start, x, y, batch_norm=False), expected)


def test_batch_norm_per_replica_trains_as_autodiff_under_the_same_strategy_float64():
    """With batch norm inside g, each replica normalises its own 4 rows (Keras' default, unsynchronised),
    so the step differs from one device's; the reversible layer's step under the strategy, moving
    statistics included, still equals autodiff's under the same strategy."""
    x, y = _data("float64")
    start = [v.numpy() for v in _model("autodiff", "float64").weights]
    expected = _mirrored_step("autodiff", start, x, y, batch_norm=True)
    assert all(not np.array_equal(a, b) for a, b in zip(expected, start, strict=True))
    _assert_same(_mirrored_step("reversible", start, x, y, batch_norm=True), expected)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_and_matches_autodiff_at_16_bit_precision(policy):
    """Under a Keras mixed-precision policy (fp16 wraps the optimizer in a LossScaleOptimizer) the layer
    trains with finite losses, its variables stay float32, and its gradients equal autodiff's to the
    16-bit compute precision."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        x, y = _data()
        models = {mode: _model(mode, dtype=None) for mode in ("reversible", "autodiff")}
        models["autodiff"].set_weights(models["reversible"].get_weights())
        grads = {}
        for mode, model in models.items():
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, tf.cast(logits, "float32"))
            grads[mode] = tape.gradient(loss, model.trainable_variables)
        assert all(v.dtype == "float32" for v in models["reversible"].trainable_variables)
        assert models["reversible"].layers[0].compute_dtype == policy.split("_")[1]
        for got, expected in zip(grads["reversible"], grads["autodiff"], strict=True):
            scale = np.max(np.abs(expected.numpy())) + 1e-3
            assert np.max(np.abs(got.numpy() - expected.numpy())) <= 0.05 * scale
        model = models["reversible"]
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        before = model.layers[0].blocks[0][0].kernel.numpy().copy()
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
        assert all(np.isfinite(history.history["loss"]))
        assert not np.array_equal(model.layers[0].blocks[0][0].kernel.numpy(), before)
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.fixture(scope="module")
def trained_model():
    model = _model("reversible")
    x, y = _data()
    _fit_one_step(model, x, y)   # moving statistics away from their initial values
    return model, x


def test_saved_model_export_serves_the_same_outputs(trained_model, tmp_path):
    model, x = trained_model
    model.export(str(tmp_path / "saved"), format="tf_saved_model")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), model(x, training=False).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_onnx_export_runs_in_onnx_runtime_with_the_same_outputs(trained_model, tmp_path):
    import onnxruntime
    import tf2onnx

    model, x = trained_model
    spec = tf.TensorSpec([None, WIDTH], tf.float32, name="inputs")
    function = tf.function(lambda inputs: model(inputs, training=False))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=17,
                                             output_path=str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
