"""The paper recipes and TrainConfig validation, the learning-rate schedule and one momentum-SGD update
against its formula."""
import numpy as np
import pytest
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.train.optimizer import MomentumSGD
from revnet.train.train_config import TrainConfig, recipe_for
from revnet.train.schedule import decay_steps, learning_rate_fn


def test_cifar_and_imagenet_recipes_follow_the_paper():
    cifar, imagenet = recipe_for("cifar"), recipe_for("imagenet")
    assert (cifar.batch_size, cifar.learning_rate, cifar.momentum, cifar.weight_decay, cifar.steps) == \
        (100, 0.1, 0.9, 2e-4, 80_000)
    assert decay_steps(cifar) == (40_000, 60_000)
    assert (imagenet.batch_size, imagenet.weight_decay, imagenet.steps) == (256, 1e-4, 600_000)
    assert decay_steps(imagenet) == (160_000, 320_000, 480_000)
    assert decay_steps(cifar.replace(steps=800)) == (400, 600)
    with pytest.raises(UserError):
        recipe_for("mnist")


def test_train_config_validates_overrides_and_round_trips_through_json():
    cifar = recipe_for("cifar")
    for bad, message in [(dict(batch_size=0), "--batch-size"), (dict(learning_rate=-1.0), "--lr"),
                         (dict(eval_every=-1), "eval-every"), (dict(mode="autodiff"), "unknown training option"),
                         (dict(unknown_option=3), "unknown training option")]:
        with pytest.raises(UserError, match=message):
            cifar.replace(**bad)
    tuned = cifar.replace(steps=300, learning_rate=0.05, seed=4)
    assert TrainConfig.from_json(tuned.to_json()) == tuned
    assert tuned.replace(seed=None) == tuned  # None means "not given", it never clears a value


def test_learning_rate_divides_by_ten_at_each_boundary():
    rate = learning_rate_fn(recipe_for("cifar").replace(steps=80))
    rates = [float(rate(step)) for step in (0, 39, 40, 59, 60, 79)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_momentum_sgd_with_weight_decay_matches_the_formula():
    kernel = tf.Variable([1.0, -2.0])
    bias = tf.Variable([0.5])
    optimizer = MomentumSGD([kernel, bias], momentum=0.9, weight_decay=0.1, decay_variables=[kernel])
    for _ in range(2):
        optimizer.apply_gradients([tf.constant([1.0, 1.0]), tf.constant([2.0])], [kernel, bias], tf.constant(0.5))
    # By hand: v1 = g + wd*w0; w1 = w0 - lr*v1; v2 = 0.9*v1 + g + wd*w1; w2 = w1 - lr*v2 (no decay on bias).
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    b, vb = 0.5, 0.0
    for _ in range(2):
        v = 0.9 * v + np.array([1.0, 1.0]) + 0.1 * w
        w = w - 0.5 * v
        vb = 0.9 * vb + 2.0
        b = b - 0.5 * vb
    np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), [b], rtol=1e-6)
    assert int(optimizer.iterations.numpy()) == 2


def test_warm_up_then_cosine_reaches_zero_at_the_last_step():
    train = recipe_for("cifar").replace(steps=100, schedule="cosine", warmup_steps=10, learning_rate=0.2)
    rate = learning_rate_fn(train)
    rates = {step: float(rate(step)) for step in (0, 4, 9, 10, 55, 99, 100)}
    np.testing.assert_allclose([rates[0], rates[4], rates[9]], [0.02, 0.1, 0.2], rtol=1e-6)
    np.testing.assert_allclose(rates[10], 0.2, rtol=1e-6)
    np.testing.assert_allclose(rates[55], 0.1, rtol=1e-5)   # half way through the cosine part
    assert 0 < rates[99] < 1e-3 and rates[100] == 0.0
    # Warm-up in front of the paper's step schedule keeps its boundaries.
    stepped = learning_rate_fn(recipe_for("cifar").replace(steps=80, warmup_steps=5))
    np.testing.assert_allclose([float(stepped(s)) for s in (0, 5, 39, 40, 60)], [0.02, 0.1, 0.1, 0.01, 0.001],
                               rtol=1e-6)


def test_fine_tuning_options_are_checked():
    cifar = recipe_for("cifar").replace(steps=10)
    for bad, message in [(dict(schedule="linear"), "schedule"), (dict(warmup_steps=10), "warmup-steps"),
                         (dict(label_smoothing=0.7), "label-smoothing")]:
        with pytest.raises(UserError, match=message):
            cifar.replace(**bad)


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    from revnet.train.steps import cross_entropy

    logits = tf.constant([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = tf.constant([0, 2])
    probabilities = tf.nn.softmax(logits).numpy()
    target = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[[0, 2]]
    expected = -(target * np.log(probabilities)).sum(axis=1)
    np.testing.assert_allclose(cross_entropy(labels, logits, 0.1).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(labels, logits).numpy(),
                               -np.log(probabilities[[0, 1], [0, 2]]), rtol=1e-5)
