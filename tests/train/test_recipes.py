"""The paper recipes and TrainConfig validation, the learning-rate schedule and one momentum-SGD update against its formula."""
import numpy as np
import pytest
import tensorflow as tf

from revnet.common.errors import UserError
from revnet.train.optimizer import MomentumSGD
from revnet.train.config import TrainConfig, learning_rate_at, recipe_for


def test_cifar_and_imagenet_recipes_follow_the_paper():
    cifar, imagenet = recipe_for("cifar"), recipe_for("imagenet")
    assert (cifar.batch_size, cifar.learning_rate, cifar.momentum, cifar.weight_decay, cifar.steps) == \
        (100, 0.1, 0.9, 2e-4, 80_000)
    assert cifar.lr_boundaries == (40_000, 60_000)
    assert (imagenet.batch_size, imagenet.weight_decay, imagenet.steps) == (256, 1e-4, 600_000)
    assert imagenet.lr_boundaries == (160_000, 320_000, 480_000)
    assert cifar.replace(steps=800).lr_boundaries == (400, 600)
    with pytest.raises(UserError):
        recipe_for("mnist")


def test_train_config_validates_overrides_and_round_trips_through_json():
    cifar = recipe_for("cifar")
    for bad, message in [(dict(batch_size=0), "--batch-size"), (dict(learning_rate=-1.0), "--lr"),
                         (dict(mixed_precision="fp8"), "mixed-precision"), (dict(mode="magic"), "mode"),
                         (dict(bn_momentum=1.0), "bn-momentum"), (dict(eval_every=-1), "eval-every"),
                         (dict(unknown_option=3), "unknown training option")]:
        with pytest.raises(UserError, match=message):
            cifar.replace(**bad)
    tuned = cifar.replace(steps=300, learning_rate=0.05, seed=4)
    assert TrainConfig.from_json(tuned.to_json()) == tuned
    assert tuned.replace(seed=None) == tuned  # None means "not given", it never clears a value


def test_learning_rate_divides_by_ten_at_each_boundary():
    rates = [float(learning_rate_at(step, 0.1, (40, 60), 0.1)) for step in (0, 39, 40, 59, 60, 79)]
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
