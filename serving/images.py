"""Image decoding "as in evaluation", twice: in the TF graph (the SavedModel's `predict_images`)
and with Pillow (the server, because ONNX cannot hold DecodeJpeg and the hot path avoids TF).

Evaluation preprocessing: decode to 3-channel RGB, then for the ImageNet family a central crop of
87.5% of the shorter side; finally a bilinear resize to the model's square input when the size
differs. CIFAR-sized inputs are therefore passed through untouched, identical on both paths.
"""
from __future__ import annotations

import io

import numpy as np

from common.errors import UserError

IMAGENET_CENTRAL_FRACTION = 0.875


def _crop_box(height: int, width: int, family: str):
    if family != "imagenet":
        return 0, 0, height, width
    side = int(round(min(height, width) * IMAGENET_CENTRAL_FRACTION))
    top, left = (height - side) // 2, (width - side) // 2
    return top, left, side, side


def decode_image_numpy(data: bytes, input_size: int, family: str) -> np.ndarray:
    """float32 [input_size, input_size, 3] in 0..255 from JPEG/PNG bytes, or a UserError."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UserError("image bytes are empty; expected a JPEG or PNG file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG"):
                raise UserError(f"image format {image.format} is not supported; expected JPEG or PNG")
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"bytes are not a decodable JPEG or PNG image ({type(error).__name__})") from None
    top, left, height, width = _crop_box(pixels.shape[0], pixels.shape[1], family)
    pixels = pixels[top:top + height, left:left + width]
    if pixels.shape[:2] != (input_size, input_size):
        pixels = np.asarray(Image.fromarray(pixels).resize((input_size, input_size), Image.BILINEAR))
    return pixels.astype(np.float32)


def decode_images_numpy(images, input_size: int, family: str) -> np.ndarray:
    if not images:
        raise UserError("the request has no images; expected at least one")
    return np.stack([decode_image_numpy(data, input_size, family) for data in images])


def decode_image_tf(data, input_size: int, family: str):
    """The TF graph version of `decode_image_numpy` (one scalar string tensor)."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    shape = tf.shape(image)
    if family == "imagenet":
        side = tf.cast(tf.round(tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) * IMAGENET_CENTRAL_FRACTION), tf.int32)
        image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2, (shape[1] - side) // 2, side, side)
    image = tf.cast(image, tf.float32)
    same = tf.logical_and(tf.equal(tf.shape(image)[0], input_size), tf.equal(tf.shape(image)[1], input_size))
    image = tf.cond(same, lambda: image,
                    lambda: tf.clip_by_value(tf.round(tf.image.resize(image, [input_size, input_size], method="bilinear",
                                                                     antialias=True)), 0.0, 255.0))
    return tf.ensure_shape(image, [input_size, input_size, 3])
