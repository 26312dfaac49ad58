"""Images from a preprocessed dataset, read from its TFRecords: the export's parity, calibration and
quantization-evaluation sets."""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Decoded float images [N,H,W,3] (0..255), their labels (None when unknown) and where they came from."""
    images: np.ndarray
    labels: Optional[np.ndarray]
    source: str


def read_validation_images(data_dir: str, count: int, split: str = "validation") -> Tuple[List[bytes], List[int]]:
    """Up to `count` (encoded image, label) pairs of `split`; empty lists when the dataset is unusable."""
    import tensorflow as tf

    from revnet.common.errors import UserError
    from revnet.preprocess.schema import ENCODED, LABEL, load_metadata, parse_example, split_files

    if not data_dir or not os.path.isdir(data_dir):
        return [], []
    try:
        files = split_files(data_dir, load_metadata(data_dir), split)
    except UserError as error:
        log.warning("cannot read %s images: %s", split, error)
        return [], []
    encoded, labels = [], []
    for record in tf.data.TFRecordDataset(files).take(count):
        example = parse_example(record)
        encoded.append(example[ENCODED].numpy())
        labels.append(int(example[LABEL].numpy()))
    return encoded, labels


def read_image_set(data_dir: Optional[str], split: str, count: int, size: int, preprocessing: str,
                   seed: int = 0) -> ImageSet:
    """Up to `count` decoded images of `split`, or `count` random images (labels None) when there are none."""
    from revnet.serving.request_images import decode_images_numpy

    encoded, labels = read_validation_images(data_dir, count, split) if data_dir else ([], [])
    if encoded:
        return ImageSet(decode_images_numpy(encoded, size, preprocessing), np.asarray(labels), f"{split}:{data_dir}")
    log.warning("no %s images found (data dir %r); using random images", split, data_dir)
    images = np.random.RandomState(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)
    return ImageSet(np.round(images), None, "random")
