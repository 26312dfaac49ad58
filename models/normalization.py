"""Input normalisation inside the model, so training, evaluation and every exported signature take raw
0..255 RGB pixels. The model config's `input_normalization` picks one of three conventions:

    "standardize"    (x - mean_c) / std_c with fixed per-channel statistics of the dataset family
                     (PIXEL_STATS); what this project used first, so configs saved before the field
                     existed keep it.
    "subtract_mean"  x - pixel_mean, no division: the original code's CIFAR pipeline. `pixel_mean` (0..255
                     scale) is the per-pixel mean image [H][W][3] of the training split, or per-channel
                     constants [3].
    "symmetric"      (x * (1/255) - 0.5) * 2, in [-1, 1]: the original code's ImageNet pipeline
                     (convert_image_dtype, then subtract 0.5 and multiply by 2, in that order, so the
                     float32 rounding is the original's too).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from revnet.common.errors import UserError, choose

INPUT_NORMALIZATIONS = ("standardize", "subtract_mean", "symmetric")

# Per-channel pixel statistics (0..1 scale) per dataset family, for "standardize".
PIXEL_STATS = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def pixel_mean_array(pixel_mean, input_size: int) -> np.ndarray:
    """`pixel_mean` as float64 [3] or [input_size, input_size, 3], or a UserError naming what is wrong."""
    try:
        array = np.asarray(pixel_mean, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("pixel_mean must be 3 numbers (per channel) or a [H][W][3] nested list (per pixel)") from None
    if array.shape not in ((3,), (input_size, input_size, 3)):
        raise UserError(f"pixel_mean has shape {list(array.shape)}; expected [3] (per channel) or "
                        f"[{input_size}, {input_size}, 3] (per pixel, the model's input size)")
    if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 255.0:
        raise UserError("pixel_mean values must be finite and within 0..255 (raw pixel scale)")
    return array


def check_input_normalization(config) -> None:
    """Raise a UserError unless the config's normalisation fields are consistent."""
    choose("input normalization", config.input_normalization, INPUT_NORMALIZATIONS)
    if config.input_normalization == "subtract_mean":
        if config.pixel_mean is None:
            raise UserError("input normalization 'subtract_mean' needs a pixel_mean (per-pixel image or 3 numbers)")
        pixel_mean_array(config.pixel_mean, config.input_size)
    elif config.pixel_mean is not None:
        raise UserError(f"pixel_mean is only used by input normalization 'subtract_mean', "
                        f"not {config.input_normalization!r}")


def as_nested_tuple(pixel_mean) -> Optional[Tuple]:
    """A hashable, JSON-friendly copy of a pixel mean (nested tuples of floats), or None."""
    if pixel_mean is None:
        return None
    array = np.asarray(pixel_mean, dtype=np.float64)
    return tuple(float(v) for v in array) if array.ndim == 1 else tuple(as_nested_tuple(row) for row in array)


def normalization_constants(config, dtype):
    """(mean, std) tensors the model subtracts and divides by; None where the convention has none."""
    import tensorflow as tf

    check_input_normalization(config)
    if config.input_normalization == "standardize":
        mean, std = PIXEL_STATS[config.family]
        return tf.constant([255.0 * m for m in mean], dtype), tf.constant([255.0 * s for s in std], dtype)
    if config.input_normalization == "subtract_mean":
        return tf.constant(pixel_mean_array(config.pixel_mean, config.input_size), dtype), None
    return None, None


def normalize(images, input_normalization: str, mean, std, dtype):
    """Raw 0..255 pixels to the network's input, in `dtype`."""
    import tensorflow as tf

    x = tf.cast(images, dtype)
    if input_normalization == "symmetric":
        return (x * (1.0 / 255.0) - 0.5) * 2.0
    x = x - mean
    return x / std if std is not None else x
