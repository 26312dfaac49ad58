"""Batch norm in float32 and bf16 computes what the float64 reference computes: output,
biased batch moments (the moving averages' input) and gradients, in training and inference mode."""
import numpy as np
import pytest
import tensorflow as tf

from revnet.models.layers import batch_norm, bn_params, initial_value, SeedSequence


def _params(dtype):
    seeds = SeedSequence(5)
    params = {spec.name: initial_value(spec, dtype, seeds) for spec in bn_params("bn", 6)}
    params["bn/gamma"] = params["bn/gamma"] + tf.cast(tf.range(6), dtype) * 0.1
    params["bn/beta"] = params["bn/beta"] + 0.3
    params["bn/moving_mean"] = params["bn/moving_mean"] + 0.5
    return params


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype, tolerance", [(tf.float32, 1e-5), (tf.bfloat16, 2e-2)])
def test_fused_batch_norm_matches_the_float64_reference(training, dtype, tolerance):
    x64 = tf.random.stateless_normal([3, 5, 5, 6], [1, 2], mean=2.0, stddev=3.0, dtype=tf.float64)
    upstream = tf.random.stateless_normal([3, 5, 5, 6], [3, 4], dtype=tf.float64)
    results = {}
    for x_dtype, param_dtype in ((tf.float64, tf.float64), (dtype, tf.float32)):
        params = _params(param_dtype)
        x = tf.cast(x64, x_dtype)
        stats = {}
        with tf.GradientTape() as tape:
            tape.watch([x, params["bn/gamma"], params["bn/beta"]])
            y = batch_norm(params, "bn", x, training, 1e-3, stats)
            loss = tf.reduce_sum(tf.cast(y, tf.float64) * upstream)
        assert y.dtype == x_dtype
        grads = tape.gradient(loss, [x, params["bn/gamma"], params["bn/beta"]])
        results[x_dtype] = [y] + grads + (list(stats["bn"]) if training else [])
    for index, (reference, candidate) in enumerate(zip(results[tf.float64], results[dtype], strict=True)):
        reference, candidate = reference.numpy(), tf.cast(candidate, tf.float64).numpy()
        assert np.linalg.norm(candidate - reference) <= tolerance * np.linalg.norm(reference), index


def test_the_recomputed_batch_norm_has_autodiffs_output_moments_and_gradients_in_float64():
    """batch_norm_recomputed (what a 16-bit input trains through) against autodiff of the plain ops."""
    from revnet.models.layers import batch_norm_recomputed

    x = tf.random.stateless_normal([3, 5, 5, 6], [1, 2], mean=2.0, stddev=3.0, dtype=tf.float64)
    upstream = tf.random.stateless_normal([3, 5, 5, 6], [3, 4], dtype=tf.float64)
    params = _params(tf.float64)
    gamma, beta = params["bn/gamma"], params["bn/beta"]
    results = []
    for recomputed in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([x, gamma, beta])
            if recomputed:
                y, mean, variance = batch_norm_recomputed(x, gamma, beta, 1e-3)
            else:
                mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
                y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-3)
            loss = tf.reduce_sum(y * upstream)
        results.append([y, mean, variance] + tape.gradient(loss, [x, gamma, beta]))
    for reference, candidate in zip(*results, strict=True):
        np.testing.assert_allclose(candidate.numpy(), reference.numpy(), rtol=0, atol=1e-10)

