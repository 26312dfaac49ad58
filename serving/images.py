"""Image decoding "as in evaluation", twice: in the TF graph (the SavedModel's `predict_images`, which
calls the input pipeline's own evaluation preprocessing) and in numpy (the server, because ONNX cannot
hold DecodeJpeg and the hot path avoids TF).

Evaluation preprocessing (`input_pipeline.eval_preprocess`, chosen by the model config's `preprocessing`):
decode to 3-channel RGB float; "cifar": bilinear resize to the square input when the size differs;
"imagenet": resize the shorter side to size*256/224, then centre-crop; "inception" (the original code's): the
central 87.5%, resized with TF1's bilinear (no half-pixel centres). The numpy path re-implements TF's bilinear
resize (both centre conventions, no antialiasing) so both paths agree.
"""
from __future__ import annotations

import io

import numpy as np

from revnet.common.errors import UserError
from revnet.preprocess.input_pipeline import INCEPTION_CENTRAL_FRACTION, imagenet_resize_target


def _resize_bilinear(image: np.ndarray, height: int, width: int, half_pixel_centers: bool = True) -> np.ndarray:
    """tf.image.resize(method="bilinear") in numpy: half-pixel centres, edge clamping, float output; with
    half_pixel_centers=False, TF1's resize_bilinear (output pixel i samples input position i * in/out)."""
    def axis(out_size, in_size):
        if half_pixel_centers:
            position = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
        else:
            position = np.arange(out_size, dtype=np.float32) * np.float32(in_size / out_size)
        low = np.minimum(np.floor(position).astype(np.int64), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (position - low).astype(np.float32)

    top, bottom, y_weight = axis(height, image.shape[0])
    left, right, x_weight = axis(width, image.shape[1])
    rows = image[top] + (image[bottom] - image[top]) * y_weight[:, None, None]
    return rows[:, left] + (rows[:, right] - rows[:, left]) * x_weight[None, :, None]


def _evaluation_resize(pixels: np.ndarray, input_size: int, preprocessing: str) -> np.ndarray:
    height, width = pixels.shape[:2]
    if preprocessing == "inception":
        # tf.image.central_crop: the start offset is truncated, the crop keeps what is between the offsets.
        top = int((height - height * INCEPTION_CENTRAL_FRACTION) / 2)
        left = int((width - width * INCEPTION_CENTRAL_FRACTION) / 2)
        pixels = _resize_bilinear(pixels[top:height - top, left:width - left], input_size, input_size,
                                  half_pixel_centers=False)
    elif preprocessing == "imagenet":
        resize_to = imagenet_resize_target(input_size)
        scale = np.float32(resize_to) / np.float32(min(height, width))
        new_h, new_w = int(np.round(np.float32(height) * scale)), int(np.round(np.float32(width) * scale))
        pixels = _resize_bilinear(pixels, new_h, new_w)
        top, left = (new_h - input_size) // 2, (new_w - input_size) // 2
        pixels = pixels[max(top, 0):max(top, 0) + input_size, max(left, 0):max(left, 0) + input_size]
        if pixels.shape[:2] != (input_size, input_size):  # smaller than the crop: TF pads with zeros
            padded = np.zeros((input_size, input_size, 3), np.float32)
            off_h, off_w = (input_size - pixels.shape[0]) // 2, (input_size - pixels.shape[1]) // 2
            padded[off_h:off_h + pixels.shape[0], off_w:off_w + pixels.shape[1]] = pixels
            pixels = padded
    elif (height, width) != (input_size, input_size):
        pixels = _resize_bilinear(pixels, input_size, input_size)
    return np.clip(pixels, 0.0, 255.0)


def decode_image_numpy(data: bytes, input_size: int, preprocessing: str) -> np.ndarray:
    """float32 [input_size, input_size, 3] in 0..255 from JPEG/PNG bytes, or a UserError."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UserError("image bytes are empty; expected a JPEG or PNG file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "PNG"):
                raise UserError(f"image format {image.format} is not supported; expected JPEG or PNG")
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UserError(f"bytes are not a decodable JPEG or PNG image ({type(error).__name__})") from None
    return _evaluation_resize(pixels, input_size, preprocessing).astype(np.float32)


def decode_images_numpy(images, input_size: int, preprocessing: str) -> np.ndarray:
    if not images:
        raise UserError("the request has no images; expected at least one")
    return np.stack([decode_image_numpy(data, input_size, preprocessing) for data in images])


def decode_image_tf(data, input_size: int, preprocessing: str):
    """The TF graph version (one scalar string tensor): the input pipeline's evaluation preprocessing."""
    from revnet.preprocess.input_pipeline import decode_rgb, eval_preprocess

    return eval_preprocess(decode_rgb(data), preprocessing, input_size)
