"""Preprocessing throughput on the ImageNet path: a plain Python loop against the Beam pipeline.

All rows come from one run on the same generated ILSVRC2012-style JPEG tree (ImageNet-like sizes,
with a CMYK JPEG, a PNG named .JPEG, a grayscale JPEG, a truncated JPEG and an empty file among them).
The loop does the same work as the pipeline's Encode and WriteShard steps: read, decode fully, check,
convert when needed, build the Example and write TFRecords, in one process.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Dict, List

from revnet.common.errors import UserError

SIZE_RANGE = (240, 420)  # ImageNet's typical image edges in pixels
NUM_CLASSES = 10


def _parse_workers(worker_counts: str) -> List[int]:
    try:
        counts = [int(part) for part in str(worker_counts).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--workers must be comma-separated integers like 1,2; got {worker_counts!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--workers needs at least one count, each >= 1; got {worker_counts!r}")
    return counts


def python_loop(input_dir: str, output_dir: str) -> Dict[str, int]:
    """Single-process baseline: list, decode, check, encode and write every image; returns counts."""
    from revnet.preprocess import imagenet, images, tfrecord

    _, _, items = imagenet.list_imagenet(input_dir)
    counts = {"written": 0, "rejected": 0}
    os.makedirs(output_dir, exist_ok=True)
    for split, split_items in items.items():
        with open(os.path.join(output_dir, f"{split}.tfrecord"), "wb") as handle:
            for item in split_items:
                with open(item.path, "rb") as source:
                    data = source.read()
                try:
                    encoded = images.to_rgb_jpeg(data)
                except images.ImageRejected:
                    counts["rejected"] += 1
                    continue
                tfrecord.write_record(handle, tfrecord.image_example(
                    encoded.encoded, encoded.image_format, encoded.height, encoded.width,
                    os.path.basename(item.path), item.label, item.text, synset=item.synset))
                counts["written"] += 1
    return counts


def run_preprocess_benchmark(num_images: int = 300, worker_counts="1,2", seed: int = 0) -> List[Dict]:
    """Rows of {method, mode, workers, images, written, rejected, seconds, images_per_second, vs_loop}."""
    from revnet.pipeline import run_preprocess
    from revnet.preprocess.fake_data import write_imagenet_tree

    counts = _parse_workers(worker_counts)
    if num_images < NUM_CLASSES:
        raise UserError(f"--images must be at least {NUM_CLASSES}")
    root = tempfile.mkdtemp(prefix="revnet-bench-preprocess-")
    try:
        tree = os.path.join(root, "imagenet")
        per_class = max(1, (num_images - 5) // NUM_CLASSES)
        info = write_imagenet_tree(tree, NUM_CLASSES, train_per_class=max(1, per_class - 1), val_per_class=1,
                                   seed=seed, size_range=SIZE_RANGE)
        total = int(info["train_files"]) + int(info["val_files"])
        rows = []
        started = time.perf_counter()
        loop_counts = python_loop(tree, os.path.join(root, "loop"))
        loop_seconds = time.perf_counter() - started
        rows.append({"method": "python loop", "mode": "-", "workers": 1, "images": total, **loop_counts,
                     "seconds": round(loop_seconds, 3)})
        for workers in counts:
            started = time.perf_counter()
            metadata = run_preprocess("imagenet", tree, os.path.join(root, f"beam-{workers}"), train_shards=4,
                                      val_shards=1, workers=workers, max_reject_fraction=1.0)
            seconds = time.perf_counter() - started
            splits = metadata["splits"].values()
            # One worker runs in-process (in_memory); more run as worker processes (multi_processing).
            rows.append({"method": "beam DirectRunner", "mode": "in_memory" if workers == 1 else "multi_processing",
                         "workers": workers, "images": total,
                         "written": sum(s["written"] for s in splits), "rejected": sum(s["rejected"] for s in splits),
                         "seconds": round(seconds, 3)})
        for row in rows:
            row["images_per_second"] = round(row["images"] / row["seconds"], 1)
            row["vs_loop"] = round(row["images_per_second"] / rows[0]["images_per_second"], 3)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def format_rows(rows: List[Dict]) -> str:
    header = f"{'method':<20}{'mode':<18}{'workers':>8}{'images':>8}{'written':>9}{'rejected':>9}{'seconds':>9}" \
             f"{'images/s':>10}{'vs loop':>9}"
    lines = [header]
    for row in rows:
        lines.append(f"{row['method']:<20}{row['mode']:<18}{row['workers']:>8}{row['images']:>8}{row['written']:>9}"
                     f"{row['rejected']:>9}{row['seconds']:>9.2f}{row['images_per_second']:>10.1f}"
                     f"{row['vs_loop']:>8.2f}x")
    return "\n".join(lines)
