"""Pinned numerics at a fixed seed: the reversible backward pass must stay as accurate as autodiff.

Gradient error is measured against float64 autodiff with the same weights (`benchmarks/numerics.py`).
Measured on this machine kind (revnet-38 with 3-2-2 units, 16x16 noise, batch 8): reversible/autodiff
1.000 (float32, 4.5e-3 each), 1.000 (bf16), 0.997 (fp16); worst stage reconstruction error 4e-7
(float32), 3e-9 (bf16), 9e-5 (fp16). Before the float32 stream, bf16 rebuilt inputs to ~1e-2.
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
