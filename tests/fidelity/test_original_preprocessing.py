"""The original code's ImageNet evaluation crop ("inception": central 87.5%, then TF1's bilinear resize
without half-pixel centres) in the TF pipeline and its numpy twin used by the server."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from revnet.preprocess.input_pipeline import eval_preprocess
from revnet.serving.request_images import decode_image_numpy, decode_image_tf


def _png(shape, seed=0):
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, shape + (3,)).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape, size", [((90, 70), 64), ((256, 341), 224), ((224, 224), 224), ((31, 47), 32)])
def test_numpy_twin_matches_the_tf_pipeline(shape, size):
    data = _png(shape)
    ours = decode_image_numpy(data, size, "inception")
    theirs = decode_image_tf(tf.constant(data), size, "inception").numpy()
    assert ours.shape == theirs.shape == (size, size, 3)
    assert np.abs(ours - theirs).max() < 0.01


@pytest.mark.parametrize("shape, size", [((90, 70), 64), ((375, 500), 224)])
def test_pipeline_is_the_originals_eval_image(shape, size):
    """Against the original's own op sequence on [0, 1] floats (convert_image_dtype, central_crop(0.875),
    tf.compat.v1.image.resize_bilinear(align_corners=False)), scaled back to 0..255."""
    pixels = np.random.RandomState(1).randint(0, 256, shape + (3,)).astype(np.uint8)
    unit = tf.image.convert_image_dtype(tf.constant(pixels), tf.float32)
    cropped = tf.image.central_crop(unit, 0.875)
    original = tf.compat.v1.image.resize_bilinear(cropped[None], [size, size], align_corners=False)[0] * 255.0
    ours = eval_preprocess(tf.constant(pixels, tf.float32), "inception", size)
    assert np.abs(ours.numpy() - original.numpy()).max() < 1e-3
    # and it is not the project's own ImageNet crop
    assert np.abs(eval_preprocess(tf.constant(pixels, tf.float32), "imagenet", size).numpy() - ours.numpy()).max() > 1
