"""A small ILSVRC2012-layout folder of generated JPEGs, for tests and the preprocessing benchmark.

It holds the troublemakers the real dataset is known for, placed in the training split: a CMYK JPEG,
a PNG named `.JPEG` and a grayscale JPEG (all converted), plus a truncated JPEG and an empty file
(both rejected). Validation is `val/<synset>/` folders or the flat `val/ILSVRC2012_val_*.JPEG`
layout with both label-file formats written beside it.
"""
from __future__ import annotations

import io
import os
from typing import Dict, List

import numpy as np
from PIL import Image

SPECIALS = ("cmyk", "png", "grayscale", "truncated", "empty")
REJECTED_SPECIALS = ("truncated", "empty")


def _image(rng: np.random.Generator, class_index: int, size_range=(48, 96)) -> Image.Image:
    height, width = (int(rng.integers(*size_range)), int(rng.integers(*size_range)))
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * (class_index + 1) * 3) % 256, (yy * 5 + class_index * 40) % 256,
                     np.full_like(xx, 60 * class_index % 256)], axis=-1)
    noise = rng.integers(0, 40, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _special(kind: str, image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    if kind == "cmyk":
        image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    elif kind == "png":
        image.save(buffer, format="PNG")
    elif kind == "grayscale":
        image.convert("L").save(buffer, format="JPEG", quality=90)
    elif kind == "truncated":
        data = _jpeg(image)
        return data[: len(data) // 2]
    elif kind == "empty":
        return b""
    return buffer.getvalue()


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def synset_names(num_classes: int) -> List[str]:
    return [f"n{1440764 + 1000 * index:08d}" for index in range(num_classes)]


def write_imagenet_tree(root: str, num_classes: int = 3, train_per_class: int = 6, val_per_class: int = 2,
                        val_layout: str = "folders", specials: bool = True, seed: int = 0,
                        size_range=(48, 96)) -> Dict[str, object]:
    """Write the tree; returns {"synsets", "val_synsets" (sorted file-name order), "specials": {kind: path},
    "train_files", "val_files"}."""
    rng = np.random.default_rng(seed)
    synsets = synset_names(num_classes)
    train_files, val_files, special_paths = 0, 0, {}
    for index, synset in enumerate(synsets):
        for number in range(train_per_class):
            path = os.path.join(root, "train", synset, f"{synset}_{number + 1}.JPEG")
            _write(path, _jpeg(_image(rng, index, size_range)))
            train_files += 1
    if specials:
        for number, kind in enumerate(SPECIALS):
            synset = synsets[number % num_classes]
            path = os.path.join(root, "train", synset, f"{synset}_{9000 + number}.JPEG")
            _write(path, _special(kind, _image(rng, synsets.index(synset), size_range)))
            special_paths[kind] = path
            train_files += 1
    val_synsets = []
    for number in range(num_classes * val_per_class):
        index = int(rng.integers(0, num_classes)) if number >= num_classes else number
        name = f"ILSVRC2012_val_{number + 1:08d}.JPEG"
        folder = os.path.join(root, "val", synsets[index]) if val_layout == "folders" else os.path.join(root, "val")
        _write(os.path.join(folder, name), _jpeg(_image(rng, index, size_range)))
        val_synsets.append(synsets[index])
        val_files += 1
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w", encoding="utf-8") as handle:
        for index, synset in enumerate(synsets):
            handle.write(f"{synset} class {index}, thing {index}\n")
    if val_layout != "folders":
        # Kaggle's CSV lists images in no particular order; the text format is in sorted file-name order.
        rows = [(f"ILSVRC2012_val_{n + 1:08d}", s) for n, s in enumerate(val_synsets)]
        with open(os.path.join(root, "LOC_val_solution.csv"), "w", encoding="utf-8") as handle:
            handle.write("ImageId,PredictionString\n")
            for image_id, synset in reversed(rows):
                handle.write(f"{image_id},{synset} 10 20 30 40 {synset} 1 2 3 4 \n")
        with open(os.path.join(root, "val_synsets.txt"), "w", encoding="utf-8") as handle:
            handle.write("".join(f"{synset}\n" for synset in val_synsets))
    return {"synsets": synsets, "val_synsets": val_synsets, "specials": special_paths,
            "train_files": train_files, "val_files": val_files}
