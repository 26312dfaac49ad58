"""The imported models compute the original code's function: for every reference checkpoint, the logits
of our model on the same images equal the original's, with moving statistics (eval) and with batch
statistics (training-mode forward, in both RevNet modes). Any mapping, padding, batch-norm, shortcut,
split-order or normalisation difference shows up here."""
import numpy as np
import pytest
import tensorflow as tf

from revnet.train.experiment import restore_model

from testkit.fidelity_helpers import MODELS, assert_logits_match, fixture_path, raw_pixels

WIDTHS = {"resnet-32": (16, (16, 32, 64), 10), "revnet-38": (32, (32, 64, 112), 10),
          "revnet-104-narrow": (8, (8, 16, 32, 52), 1000)}


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_logits_equal_the_original(imported, name):
    model, config, _ = restore_model(imported, name)
    stem, widths, classes = WIDTHS[name]
    assert (model.config.stem_channels, model.config.channels_per_stage, model.config.num_classes) == \
        (stem, widths, classes)
    assert_logits_match(model(tf.constant(raw_pixels(name), tf.float32), training=False), name, "eval")


@pytest.mark.parametrize("mode", ["reversible", "autodiff"])
@pytest.mark.parametrize("name", list(MODELS))
def test_training_forward_equals_the_original(imported, name, mode):
    model, _, _ = restore_model(imported, name, mode=mode)
    assert model.config.mode == mode
    pixels = tf.constant(raw_pixels(name), tf.float32)
    assert_logits_match(model(pixels, training=True), name, "train")


def test_inputs_reach_the_network_exactly_as_the_original_fed_them(imported):
    """The in-model normalisation reproduces the original's input tensors (ImageNet: bit for bit)."""
    for name in MODELS:
        model, _, _ = restore_model(imported, name)
        ours = model_input(model, raw_pixels(name))
        theirs = np.load(fixture_path(name, "inputs.npy"))
        assert np.abs(ours - theirs).max() <= (0.0 if name == "revnet-104-narrow" else 1e-5), name


def model_input(model, pixels):
    from revnet.models.normalization import normalize

    config = model.config
    return normalize(tf.constant(pixels, tf.float32), config.input_normalization, model.pixel_mean, model.pixel_std,
                     tf.float32).numpy()
