"""A few validation images from a preprocessed dataset (for export parity checks), read from TFRecords."""
from __future__ import annotations

import logging
import os
from typing import List, Tuple

log = logging.getLogger(__name__)


def read_validation_images(data_dir: str, count: int) -> Tuple[List[bytes], List[int]]:
    """Up to `count` (encoded image, label) pairs; empty lists when the dataset is unusable."""
    import tensorflow as tf

    from revnet.common.errors import UserError
    from revnet.preprocess.schema import ENCODED, LABEL, load_metadata, parse_example, split_files

    if not data_dir or not os.path.isdir(data_dir):
        return [], []
    try:
        files = split_files(data_dir, load_metadata(data_dir), "validation")
    except UserError as error:
        log.warning("cannot read validation images: %s", error)
        return [], []
    encoded, labels = [], []
    for record in tf.data.TFRecordDataset(files).take(count):
        example = parse_example(record)
        encoded.append(example[ENCODED].numpy())
        labels.append(int(example[LABEL].numpy()))
    return encoded, labels
