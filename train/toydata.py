"""A small learnable dataset in the official folder format (PNG TFRecords + metadata.json).

Each class has its own colour and stripe orientation, both of which survive crop and flip
augmentation, plus per-image noise; a RevNet learns it to high accuracy in a few hundred steps.
Used by the tests, `benchmark train` and smoke runs; real data comes from `cli.py preprocess`.
"""
from __future__ import annotations

import io
import os
from typing import Dict

import numpy as np

from common.fileio import atomic_write_json


def toy_images(num_images: int, num_classes: int, image_size: int, seed: int):
    """(uint8 images [N, S, S, 3], int labels [N]) with balanced classes."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1234).uniform(40, 215, size=(num_classes, 3))
    angles = np.pi * np.arange(num_classes) / num_classes
    labels = np.arange(num_images) % num_classes
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    images = np.empty((num_images, image_size, image_size, 3), np.uint8)
    for i, label in enumerate(labels):
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin((np.cos(angles[label]) * xx + np.sin(angles[label]) * yy) * 0.6 + phase)
        image = palette[label] + 35.0 * wave[..., None] + rng.normal(0, 20, size=(image_size, image_size, 3))
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels


def write_toy_dataset(out_dir: str, num_train: int = 200, num_validation: int = 50, num_classes: int = 4,
                      image_size: int = 32, num_shards: int = 2, seed: int = 0) -> Dict:
    """Write train/validation TFRecords and metadata.json following `preprocess.schema`; returns the metadata."""
    import tensorflow as tf
    from PIL import Image

    from preprocess import schema

    os.makedirs(out_dir, exist_ok=True)
    splits = {}
    for split_index, (split, count) in enumerate((("train", num_train), ("validation", num_validation))):
        images, labels = toy_images(count, num_classes, image_size, seed * 2 + split_index)
        shards = []
        for shard in range(num_shards):
            name = schema.shard_name(split, shard, num_shards)
            indices = range(shard, count, num_shards)
            with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as writer:
                for index in indices:
                    buffer = io.BytesIO()
                    Image.fromarray(images[index]).save(buffer, format="PNG")
                    example = schema.make_example(buffer.getvalue(), "PNG", image_size, image_size,
                                                  f"{split}/{index:06d}.png", int(labels[index]),
                                                  f"class_{labels[index]}")
                    writer.write(example.SerializeToString())
            shards.append({"file": name, "records": len(indices)})
        splits[split] = {"read": count, "written": count, "rejected": 0, "shards": shards}
    metadata = {"dataset": "toy", "num_classes": num_classes,
                "label_names": [f"class_{k}" for k in range(num_classes)], "synsets": None,
                "label_offset": 0, "label": None, "splits": splits,
                "options": {"generator": "train.toydata", "seed": seed, "image_size": image_size},
                "complete": True}
    atomic_write_json(os.path.join(out_dir, schema.METADATA_FILE), metadata)
    return metadata
