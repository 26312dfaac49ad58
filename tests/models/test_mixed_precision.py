"""Mixed precision keeps the reversible promise: F and G in bf16/fp16, the residual stream in float32.

A few real training steps (the project's train step and MomentumSGD) in bf16 and fp16, reversible and
autodiff, must lower the loss on the toy set; fp16 overflow inside the reversible custom gradient must
skip the step and lower the loss scale; the stream and its reconstruction stay float32-exact.
"""
import numpy as np
import pytest
import tensorflow as tf

from revnet.models import build_model
from revnet.train.optimizer import DynamicLossScale, MomentumSGD
from revnet.train.steps import make_train_step
from revnet.preprocess.fake_data import toy_images

TINY = dict(units_per_stage=(3, 2, 2), num_classes=4)
BATCH = 16


@pytest.fixture(scope="module")
def toy_batches():
    images, labels = toy_images(BATCH * 6, num_classes=4, image_size=16, seed=0)
    return images.astype(np.float32), labels.astype(np.int32)


def _trainer(precision, mode, loss_scale=None, seed=0):
    model = build_model("revnet-38", mode=mode, compute_dtype=precision, seed=seed, **TINY)
    optimizer = MomentumSGD(model.trainable_variables, 0.9, 0.0, model.decay_variables, loss_scale)
    step = tf.Variable(0, dtype=tf.int64)
    position = tf.Variable(0, dtype=tf.int64)
    return model, optimizer, (lambda: make_train_step(model, optimizer, tf.distribute.get_strategy(), BATCH, step,
                                                      position, learning_rate_fn=lambda at_step: 0.05))


def _loss(model, images, labels):
    logits = model(images, training=True)
    return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))


@pytest.mark.parametrize("mode", ["reversible", "autodiff"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_a_few_mixed_precision_steps_lower_the_loss(toy_batches, precision, mode):
    images, labels = toy_batches
    loss_scale = DynamicLossScale() if precision == "float16" else None
    model, _, make = _trainer(precision, mode, loss_scale)
    train_step = make()
    held_images, held_labels = images[:BATCH], labels[:BATCH]
    before = _loss(model, held_images, held_labels)
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH).repeat())
    for _ in range(10):
        train_step(iterator, tf.constant(1))  # one step at learning rate 0.05
    after = _loss(model, held_images, held_labels)
    assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    assert after < 0.7 * before, (before, after)
    if loss_scale is not None:
        assert float(loss_scale.scale) >= 1.0


def test_fp16_overflow_inside_the_reversible_gradient_skips_the_step_and_lowers_the_scale(toy_batches):
    images, labels = toy_batches
    # 2**40 overflows float16 (max 65504) in the backward pass of the first block's F and G, which run in
    # the custom gradient's while_loop: the inf must reach the optimizer, not be masked on the way.
    loss_scale = DynamicLossScale(initial_scale=2.0 ** 40, growth_interval=1000)
    model, optimizer, make = _trainer("float16", "reversible", loss_scale)
    train_step = make()
    before = [v.numpy().copy() for v in model.trainable_variables]
    iterator = iter(tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH).repeat())
    train_step(iterator, tf.constant(1))  # one step at learning rate 0.05
    assert float(loss_scale.scale) == 2.0 ** 39
    assert int(loss_scale.good_steps) == 0
    for old, variable in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(old, variable.numpy())
    assert all(not np.any(v.numpy()) for v in optimizer.velocities)
    # Lower the scale to a sane value: the next step is applied.
    loss_scale.scale.assign(2.0 ** 10)
    train_step(iterator, tf.constant(1))  # one step at learning rate 0.05
    assert int(loss_scale.good_steps) == 1
    assert any(not np.array_equal(old, v.numpy()) for old, v in zip(before, model.trainable_variables, strict=True))


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_stream_stays_float32_and_reconstruction_is_float32_exact(precision):
    images = tf.random.stateless_uniform([4, 16, 16, 3], [3, 4], 0, 255)
    model = build_model("revnet-38", mode="reversible", compute_dtype=precision, seed=2, **TINY)
    x1, x2 = tf.split(tf.cast(model.stem(tf.cast(model.normalize(images), model.compute_dtype), True),
                              tf.float32), 2, axis=-1)
    y1, y2 = model.stacks[0](x1, x2, True)
    assert y1.dtype == y2.dtype == tf.float32
    # A stream rounded to 16 bits would rebuild the input to ~1e-3 (fp16) or ~1e-2 (bf16) per block.
    assert max(model.reconstruction_errors(images)) < 1e-5
