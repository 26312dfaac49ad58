"""The original code's input normalisation for a new experiment, from the dataset it trains on.

The original feeds CIFAR models raw 0..255 pixels minus the per-pixel mean image (no division) and
ImageNet models (x/255 - 0.5) * 2. `preprocess` records the training split's per-pixel mean in
metadata.json under "pixel_mean" ([32][32][3] floats, null for ImageNet); the model applies the
normalisation itself (models/normalization.py), so exported models still take raw pixels.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

from revnet.common.errors import UserError
from revnet.models.normalization import as_nested_tuple, pixel_mean_array

log = logging.getLogger(__name__)

PIXEL_MEAN_KEY = "pixel_mean"


def dataset_pixel_mean(metadata: Dict, data_dir: str, input_size: int) -> Optional[tuple]:
    """The training split's per-pixel mean recorded by `preprocess`, checked, or None if not recorded."""
    value = metadata.get(PIXEL_MEAN_KEY)
    if value is None:
        return None
    try:
        return as_nested_tuple(pixel_mean_array(value, input_size))
    except UserError as error:
        raise UserError(f"{data_dir}/metadata.json: {error}") from None


def parse_pixel_mean(text: str) -> tuple:
    """`--pixel-mean R,G,B` (0..255 scale) as three floats."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise UserError(f"--pixel-mean must be three comma-separated numbers R,G,B on the 0..255 scale, got {text!r}")
    pixel_mean_array(values, 1)
    return values


def original_normalization(family: str, input_size: int, pixel_mean: Optional[Sequence] = None) -> Dict:
    """ModelConfig fields for the original's convention: `pixel_mean` ([3] or per-pixel) is required for
    CIFAR and refused for ImageNet."""
    if family == "imagenet":
        if pixel_mean is not None:
            raise UserError("ImageNet models take (x/255 - 0.5) * 2 as in the original code; "
                            "a pixel mean (--pixel-mean) applies only to CIFAR models")
        return {"input_normalization": "symmetric", "pixel_mean": None}
    if pixel_mean is None:
        raise UserError("a CIFAR model needs the training images' mean: pass --data DIR (a dataset from "
                        "`cli.py preprocess`, which records it) or --pixel-mean R,G,B")
    return {"input_normalization": "subtract_mean",
            "pixel_mean": as_nested_tuple(pixel_mean_array(pixel_mean, input_size))}


def check_dataset_fits(config, metadata: Dict, data_dir: str) -> None:
    """A UserError when the dataset was prepared for the other model family (metadata.json "model_family":
    a folder dataset of --image-size 32 is for CIFAR-style models, of 224 for ImageNet-style ones)."""
    family = metadata.get("model_family")
    if family is None or family == config.family:  # datasets written before preprocess recorded it: as they are
        return
    raise UserError(f"{data_dir} was prepared for {family} models ({metadata.get('image_size')}x"
                    f"{metadata.get('image_size')} inputs) but {config.name} is a {config.family} model "
                    f"({config.input_size}x{config.input_size}); train a model of the {family} family "
                    "(`cli.py models`) or "
                    f"re-run `cli.py preprocess` with --image-size {config.input_size}")


def training_normalization(config, metadata: Dict, data_dir: str) -> Dict:
    """The normalisation fields of a new training run of `config` (a ModelConfig): the original's. A CIFAR
    dataset written before `preprocess` recorded its mean keeps per-channel standardisation, with a warning."""
    check_dataset_fits(config, metadata, data_dir)
    family, input_size = config.family, config.input_size
    pixel_mean = dataset_pixel_mean(metadata, data_dir, input_size) if family == "cifar" else None
    if family == "cifar" and pixel_mean is None:
        if metadata.get("image_size") != input_size:
            # An ImageNet-style dataset (images of any size): preprocess records no per-pixel mean for it.
            log.warning("%s holds %s images (%s) and no per-pixel mean, which preprocess records only for "
                        "%dx%d datasets; the %dx%d model normalises them with fixed per-channel statistics (for the "
                        "original's per-pixel mean, preprocess a %dx%d dataset, e.g. `preprocess folder "
                        "--image-size %d`)", data_dir, metadata.get("dataset") or "its",
                        f"{metadata['image_size']}x{metadata['image_size']}" if metadata.get("image_size")
                        else "of varied sizes", input_size, input_size, input_size, input_size, input_size,
                        input_size, input_size)
        else:
            log.warning("%s/metadata.json has no %r (written by an older `preprocess`); normalising inputs with "
                        "fixed per-channel statistics instead of the original's per-pixel mean; re-run `cli.py "
                        "preprocess` to train as the original code does", data_dir, PIXEL_MEAN_KEY)
        return {"input_normalization": "standardize", "pixel_mean": None}
    return original_normalization(family, input_size, pixel_mean)
