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

from revnet.common.fileio import atomic_write_json


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

    from revnet.preprocess import schema

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


def matplotlib_photos():
    """Paths of the real photographs that ship with matplotlib (no download needed)."""
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    return [os.path.join(folder, name) for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")]


def photo_patches(count: int, seed: int, photos=None, image_size: int = 32):
    """Real-image patches: class = which quadrant of which photo a patch comes from (2 photos x 4
    quadrants = 8 classes); each is a random square crop of 1/3..2/3 of the quadrant's side resized to
    `image_size`. Returns (uint8 [count, size, size, 3], labels, label names)."""
    from PIL import Image

    quadrants, names = [], []
    for path in photos or matplotlib_photos():
        photo = np.asarray(Image.open(path).convert("RGB"))
        half_h, half_w = photo.shape[0] // 2, photo.shape[1] // 2
        stem = os.path.splitext(os.path.basename(path))[0].lower()
        for row in range(2):
            for col in range(2):
                quadrants.append(photo[row * half_h:(row + 1) * half_h, col * half_w:(col + 1) * half_w])
                names.append(f"{stem}-{('top', 'bottom')[row]}-{('left', 'right')[col]}")
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(quadrants)
    rng.shuffle(labels)
    images = np.zeros((count, image_size, image_size, 3), np.uint8)
    for index, label in enumerate(labels):
        quadrant = quadrants[label]
        side = int(rng.uniform(1 / 3, 2 / 3) * min(quadrant.shape[:2]))
        top = rng.integers(0, quadrant.shape[0] - side + 1)
        left = rng.integers(0, quadrant.shape[1] - side + 1)
        patch = Image.fromarray(quadrant[top:top + side, left:left + side]).resize((image_size, image_size),
                                                                                  Image.BILINEAR)
        images[index] = np.asarray(patch)
    return images, labels.astype(np.int64), names


def write_photo_patch_archive(path: str, num_train: int = 4000, num_validation: int = 800, seed: int = 0) -> str:
    """The photo-quadrant patches written as a genuine cifar-10-python.tar.gz (8 classes), so the
    learning run goes through `cli.py preprocess cifar-10` like real CIFAR data."""
    from revnet.preprocess.cifar import write_cifar10_archive

    train_images, train_labels, names = photo_patches(num_train, seed * 2 + 100)
    val_images, val_labels, _ = photo_patches(num_validation, seed * 2 + 101)
    return write_cifar10_archive(path, train_images, train_labels, val_images, val_labels, names)
