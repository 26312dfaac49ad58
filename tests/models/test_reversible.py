"""The reversible stack against plain autodiff of the same weights.

float64 proves the algorithm is exact (1e-10). float32 agreement is bounded by how well-conditioned
float32 itself is at the test point (plain float32 autodiff can differ from float64 by more than the
two float32 modes differ from each other), so it is checked on smooth, image-like inputs at 1e-4.
Relative error is per tensor: ||g_reversible - g_autodiff|| / ||g_autodiff||.
"""
import numpy as np
import pytest
import tensorflow as tf

from revnet.benchmarks.numerics import max_relative_error
from revnet.models import build_model
from revnet.models.layers import BasicFn, BottleneckFn, SeedSequence
from revnet.models.reversible import ReversibleStack

SMALL_BOTTLENECK = dict(units_per_stage=(2, 3, 2), channels_per_stage=(8, 16, 32), stem_channels=16)


def _loss_and_grads(model, images, labels, use_function):
    def step():
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return loss, tape.gradient(loss, [images] + list(model.trainable_variables))

    if use_function:
        step = tf.function(step)
    loss, grads = step()
    return float(loss), [g.numpy() for g in grads]


SMALL_RESNET = dict(units_per_stage=(2, 2, 2))


@pytest.mark.parametrize("name, overrides, mode", [
    ("revnet-38", {}, "reversible"), ("revnet-164", SMALL_BOTTLENECK, "reversible"),
    ("revnet-38", {}, "recompute"), ("resnet-32", SMALL_RESNET, "recompute")],
    ids=["basic", "bottleneck", "revnet-recompute", "resnet-recompute"])
@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-4)])
@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
def test_gradients_match_autodiff(small_batch, name, overrides, mode, dtype, tolerance, use_function):
    """Reversible stacks and recomputed units (a RevNet's openers, every ResNet unit) give autodiff's gradients."""
    images, labels = small_batch
    images = tf.cast(images, dtype)
    models = {m: build_model(name, mode=m, param_dtype=dtype, seed=1, **overrides) for m in ("autodiff", mode)}
    results = {m: _loss_and_grads(model, images, labels, use_function) for m, model in models.items()}
    assert results["autodiff"][0] == pytest.approx(results[mode][0], rel=1e-6)
    reference, candidate = results["autodiff"][1], results[mode][1]
    assert len(reference) == len(models["autodiff"].trainable_variables) + 1
    assert all(np.linalg.norm(g) > 0 for g in reference[1:]), "every variable must receive a gradient"
    assert max_relative_error(reference, candidate) <= tolerance
    # Moving statistics are updated once, in the real forward pass, never during recomputation.
    for a, b in zip(models["autodiff"].variables, models[mode].variables, strict=True):
        assert a.name == b.name
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6 if dtype == "float32" else 1e-12)


def test_moving_statistics_move_exactly_once_per_step(small_batch):
    images, labels = small_batch
    model = build_model("revnet-38", mode="reversible", param_dtype="float64", seed=2)
    stack = model.stacks[0]
    before = stack.params["f/bn1/moving_mean"].numpy().copy()
    _loss_and_grads(model, tf.cast(images, tf.float64), labels, use_function=True)
    after = stack.params["f/bn1/moving_mean"].numpy()
    reference = build_model("revnet-38", mode="autodiff", param_dtype="float64", seed=2)
    _loss_and_grads(reference, tf.cast(images, tf.float64), labels, use_function=False)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, reference.stacks[0].params["f/bn1/moving_mean"].numpy(), atol=1e-12)


@pytest.mark.parametrize("fn_class", [BasicFn, BottleneckFn])
def test_reconstructed_inputs_match_true_inputs(fn_class):
    channels = 8
    stack = ReversibleStack(f=fn_class(channels, channels), g=fn_class(channels, channels), num_blocks=5,
                            name="stack", dtype=tf.float64, seeds=SeedSequence(3), bn_momentum=0.9)
    x1 = tf.random.stateless_normal([2, 8, 8, channels], [1, 1], dtype=tf.float64)
    x2 = tf.random.stateless_normal([2, 8, 8, channels], [1, 2], dtype=tf.float64)
    y1, y2 = stack(x1, x2, training=True)
    assert np.max(np.abs(y1.numpy() - x1.numpy())) > 1e-3  # the blocks really did something
    r1, r2 = stack.reconstruct(y1, y2)
    np.testing.assert_allclose(r1.numpy(), x1.numpy(), atol=1e-10)
    np.testing.assert_allclose(r2.numpy(), x2.numpy(), atol=1e-10)


def test_stage_weights_are_stacked_and_backward_is_a_while_loop():
    model = build_model("revnet-38", mode="reversible")
    stack = model.stacks[0]
    assert stack.num_blocks == 2
    assert stack.params["f/conv1/kernel"].shape == (2, 3, 3, 16, 16)
    images = tf.zeros([2, 16, 16, 3])
    labels = tf.zeros([2], tf.int32)

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(images, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    graph = grads.get_concrete_function().graph
    loops = [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    # one forward and one backward loop per stage, and no accumulators for autodiff through the forward loop
    assert len(loops) == 2 * len(model.stacks)
    # A loop must not run iterations ahead: a reconstruction run ahead keeps its tape (see test_memory.py).
    assert all(op.get_attr("parallel_iterations") == 1 for op in loops)
    assert not [op for op in graph.get_operations() if op.type == "TensorListPushBack"]


def test_inference_matches_between_modes_and_eager_and_function(small_batch):
    images, _ = small_batch
    autodiff = build_model("revnet-38", mode="autodiff", seed=4)
    reversible = build_model("revnet-38", mode="reversible", seed=4)
    eager = reversible(images, training=False).numpy()
    np.testing.assert_allclose(eager, autodiff(images, training=False).numpy(), atol=1e-5)
    np.testing.assert_allclose(eager, tf.function(lambda x: reversible(x, training=False))(images).numpy(), atol=1e-5)


def test_moving_statistics_are_replica_synchronised_means():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_model("revnet-38", seed=5)
    variable = model.stacks[0].params["f/bn1/moving_mean"]
    assert isinstance(variable, tf.distribute.DistributedValues)
    per_replica = [tf.fill([2, 8, 8, 3], 50.0), tf.fill([2, 8, 8, 3], 200.0)]
    per_replica = [x + tf.random.stateless_uniform(x.shape, [5, i], 0, 30) for i, x in enumerate(per_replica)]

    strategy.run(lambda: model(tf.switch_case(tf.distribute.get_replica_context().replica_id_in_sync_group,
                                                [lambda: per_replica[0], lambda: per_replica[1]]),
                               training=True))
    synced = variable.numpy()
    single = []
    for images in per_replica:
        reference = build_model("revnet-38", seed=5)
        reference(images, training=True)
        single.append(reference.stacks[0].params["f/bn1/moving_mean"].numpy())
    assert not np.allclose(single[0], single[1])
    np.testing.assert_allclose(synced, (single[0] + single[1]) / 2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["tf.function", "XLA"])
def test_unrolled_stacks_for_xla_give_autodiffs_gradients(small_batch, jit):
    """`unroll_loops` (what train --jit uses) runs the same reversible algorithm as straight code: float64
    gradients and moving statistics equal autodiff's, also compiled with XLA."""
    images, labels = small_batch
    images = tf.cast(images, "float64")
    models = {m: build_model("revnet-38", mode=m, param_dtype="float64", seed=1) for m in ("autodiff", "reversible")}
    models["reversible"].unroll_loops()
    assert all(stack.unrolled for stack in models["reversible"].stacks if stack is not None)

    def step(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(images,
                                                                                             training=True)))
        return tape.gradient(loss, model.trainable_variables)

    grads = {m: tf.function(lambda model=model: step(model), jit_compile=jit)() for m, model in models.items()}
    assert max_relative_error([g.numpy() for g in grads["autodiff"]],
                              [g.numpy() for g in grads["reversible"]]) <= 1e-10
    graph = tf.function(lambda: step(models["reversible"])).get_concrete_function().graph
    assert not [op for op in graph.get_operations() if op.type in ("While", "StatelessWhile")], \
        "an unrolled stack must not build a while loop in training"
    for a, b in zip(models["autodiff"].variables, models["reversible"].variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-12)
