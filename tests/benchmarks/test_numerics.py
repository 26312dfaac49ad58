"""Pinned numerics at a fixed seed: the reversible backward pass must stay as accurate as autodiff.

Gradient error is measured against float64 autodiff with the same weights (`benchmarks/numerics.py`).
Measured on this machine kind (revnet-38 with 3-2-2 units, 16x16 noise, batch 8): reversible and
autodiff errors equal (ratio 1.000) in float32 (4.4e-6 each), bf16 (0.75, some tiny gradient tensors
are all rounding) and fp16 (0.34); worst stage reconstruction error 3e-7 (float32), 2e-9 (bf16), 7e-9
(fp16). With the stream split in bf16 instead, bf16 rebuilt inputs to ~8e-3 and this test fails.
"""
import pytest
import tensorflow as tf

from revnet.benchmarks.numerics import gradient_error, reconstruction_error

OVERRIDES = {"units_per_stage": (3, 2, 2)}


@pytest.fixture(scope="module")
def batch():
    images = tf.random.stateless_uniform([8, 16, 16, 3], [7, 3], 0, 255)
    labels = tf.random.stateless_uniform([8], [7, 4], 0, 10, dtype=tf.int32)
    return images, labels


@pytest.mark.parametrize("precision, max_reconstruction_error", [
    ("float32", 1e-5), ("bf16", 1e-3), ("fp16", 1e-3)])
def test_reversible_gradient_error_stays_at_autodiff_level(batch, precision, max_reconstruction_error):
    images, labels = batch
    errors = {mode: gradient_error("revnet-38", mode, precision, images, labels, OVERRIDES)
              for mode in ("reversible", "autodiff")}
    assert 0 < errors["autodiff"] < 1.0, errors  # a real, finite error against float64
    assert errors["reversible"] <= 1.1 * errors["autodiff"], errors
    assert reconstruction_error("revnet-38", precision, images, OVERRIDES) <= max_reconstruction_error
