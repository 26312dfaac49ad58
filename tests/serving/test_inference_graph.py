"""The serving inference graph (unrolled stages, folded batch norm) computes the model's own function."""
import numpy as np
import pytest
import tensorflow as tf

from revnet.models import build_model
from revnet.serving.inference_graph import InferenceGraph, Ops, _Folder, fold_stack

SMALL = {
    "revnet-basic": ("revnet-38", dict(units_per_stage=(2, 3, 2), channels_per_stage=(8, 16, 24), stem_channels=8)),
    "revnet-bottleneck": ("revnet-164", dict(units_per_stage=(2, 2, 1), channels_per_stage=(4, 8, 8),
                                             stem_channels=16)),
    "resnet-basic": ("resnet-32", dict(units_per_stage=(2, 1, 1), channels_per_stage=(8, 16, 32), stem_channels=8)),
    "resnet-imagenet": ("resnet-50", dict(units_per_stage=(1, 1, 1, 1), channels_per_stage=(4, 4, 8, 8),
                                          stem_channels=8, input_size=32, num_classes=5)),
    # The original code's input conventions (imported checkpoints): a per-pixel mean image, per-channel
    # constants, and ImageNet's (x/255 - 0.5) * 2.
    "revnet-pixel-mean-image": ("revnet-38", dict(units_per_stage=(2, 2, 1), channels_per_stage=(8, 8, 8),
                                                  stem_channels=8, input_normalization="subtract_mean",
                                                  pixel_mean=np.random.RandomState(9).uniform(90, 160, (32, 32, 3))
                                                  .tolist())),
    "resnet-channel-mean": ("resnet-32", dict(units_per_stage=(1, 1, 1), channels_per_stage=(8, 8, 8),
                                              stem_channels=8, input_normalization="subtract_mean",
                                              pixel_mean=[125.3, 123.0, 113.9])),
    "revnet-imagenet-symmetric": ("revnet-56", dict(units_per_stage=(1, 2, 1, 1), channels_per_stage=(4, 4, 8, 8),
                                                    stem_channels=8, input_size=32, num_classes=5,
                                                    input_normalization="symmetric")),
}


def _randomise_batch_norms(model, seed: int):
    """Give every BN non-trivial gamma/beta/moving statistics, so that a wrong fold cannot pass."""
    rng = np.random.RandomState(seed)
    for variable in model.variables:
        name = variable.name
        if "gamma" in name or "moving_var" in name:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(variable.dtype.as_numpy_dtype))
        elif "beta" in name or "moving_mean" in name:
            variable.assign(rng.uniform(-0.5, 0.5, variable.shape).astype(variable.dtype.as_numpy_dtype))


def _images(count, size, seed=0):
    return tf.constant(np.random.RandomState(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32))


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_folded_unrolled_graph_equals_the_model_inference(kind):
    name, overrides = SMALL[kind]
    model = build_model(name, **{"num_classes": 4, **overrides})
    _randomise_batch_norms(model, 1)
    images = _images(6, model.config.input_size)
    expected = model(images, training=False).numpy()
    got = InferenceGraph(model).logits(images).numpy()
    assert np.abs(expected).max() > 0.1  # a degenerate (all-zero) output would match anything
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_unrolled_stack_equals_the_training_loop_forward():
    """The reversible stack's training-mode while_loop (batch statistics) against the unrolled, folded
    blocks given those same statistics as moving statistics: equal outputs on the same weights."""
    model = build_model("revnet-38", num_classes=4, units_per_stage=(4, 2, 2), channels_per_stage=(16, 16, 16),
                        stem_channels=16)
    _randomise_batch_norms(model, 2)
    stack = model.stacks[0]
    assert stack.num_blocks == 3 and stack.mode == "reversible"
    rng = np.random.RandomState(3)
    x1, x2 = (tf.constant(rng.normal(size=(5, 8, 8, 8)).astype(np.float32)) for _ in range(2))
    # Momentum 0: the training call leaves each block's batch mean and variance as the moving statistics.
    stack.bn_momentum = 0.0
    y1, y2 = tf.function(lambda a, b: stack(a, b, training=True))(x1, x2)
    folder = _Folder()
    units = fold_stack(folder, stack, "stack")
    assert len(units) == stack.num_blocks
    ops = Ops({name: tf.constant(value) for name, value in folder.arrays.items()}, "NHWC")
    pair = (x1, x2)
    for unit in units:
        pair = unit.apply(ops, pair)
    for got, expected in zip(pair, (y1, y2), strict=True):
        expected = expected.numpy()
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_building_the_graph_leaves_the_model_unchanged():
    model = build_model("revnet-38", num_classes=4, units_per_stage=(2, 2, 2), channels_per_stage=(8, 8, 8),
                        stem_channels=8)
    before = [(variable.name, variable.numpy().copy()) for variable in model.variables]
    mean_type = type(model.pixel_mean)
    graph = InferenceGraph(model)
    assert type(model.pixel_mean) is mean_type and not isinstance(model.pixel_mean, tf.Variable)
    after = [(variable.name, variable.numpy()) for variable in model.variables]
    assert [n for n, _ in before] == [n for n, _ in after]
    for (_, old), (_, new) in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    assert not set(map(id, graph.weights.values())) & set(map(id, model.variables))
