"""One shard, start to finish, in one worker: read its inputs, decode, check, encode, write the TFRecord.

The driver (pipeline/plan.py) writes one task file per output shard into the work folder: the shard's
inputs in their final order, with labels resolved (and, for CIFAR, the shard's pixel rows beside it as
.npy) and how to encode images (pipeline/plan.py IMAGE_STYLES). A worker turns a task into the shard
file and a small summary (counts per class, rejects, conversions, exact pixel sums where the dataset
records a mean, content hashes where it checks for duplicates) written to `_done/`. Only task names
move through the runner; image bytes never do.

Imports neither Beam nor TensorFlow, so Beam SDK harnesses, Dask workers and forked local workers
start quickly; the records are byte-identical to TensorFlow's (preprocess/tfrecord.py).
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Dict, List

import numpy as np

from revnet.common import storage
from revnet.preprocess.image_limits import DEFAULT_MAX_FILE_BYTES

TASKS_DIR = "_tasks"
DONE_DIR = "_done"


def task_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}"


def encode_shard(work_dir: str, name: str) -> Dict:
    """Write the shard of task `name`; returns (and records in _done/) its summary."""
    from revnet.preprocess import images, tfrecord

    task = json.loads(storage.read_text(storage.join(work_dir, TASKS_DIR, name + ".json")))
    rows = None
    if task.get("pixels"):
        rows = np.load(io.BytesIO(storage.read_bytes(storage.join(work_dir, TASKS_DIR, task["pixels"]))))
    encode = _encoder(task.get("encoding") or {"kind": "jpeg"}, images)
    rejects: List[Dict] = []
    converted: Dict[str, int] = {}
    labels: Dict[str, int] = {}
    digests: List[List[str]] = []
    # Exact integer sums (at most 5e4 * 255 per value): the mean is the same whatever the shard order.
    pixel_sum = None
    written = 0
    # The whole file is rewritten (and appears only when complete), so a retried task is harmless.
    with storage.create(storage.join(work_dir, task["file"])) as handle:
        for item in task["items"]:
            try:
                if rows is not None:
                    record, action, pixels, data = _cifar_record(item, rows[item["row"]], images, tfrecord)
                else:
                    record, action, pixels, data = _image_record(item, encode, images, tfrecord)
            except images.ImageRejected as error:
                rejects.append({"path": item["path"], "split": task["split"], "reason": str(error)})
                continue
            if action != "kept":
                converted[action] = converted.get(action, 0) + 1
            if task.get("digests"):
                digests.append([hashlib.sha256(data).hexdigest()[:32], item["path"]])
            if pixels is not None:
                pixel_sum = pixels.astype(np.int64) if pixel_sum is None else pixel_sum + pixels
            tfrecord.write_record(handle, record)
            labels[str(item["label"])] = labels.get(str(item["label"]), 0) + 1
            written += 1
    summary = {"task": name, "split": task["split"], "shard": task["shard"], "file": task["file"],
               "read": len(task["items"]), "records": written, "rejects": rejects, "converted": converted,
               "labels": labels, "digests": digests,
               "pixel_sum": pixel_sum.tolist() if pixel_sum is not None else None}
    storage.write_bytes(storage.join(work_dir, DONE_DIR, name + ".json"), json.dumps(summary).encode("utf-8"))
    return summary


def _cifar_record(item: Dict, planar_row: np.ndarray, images, tfrecord):
    """The same for a CIFAR row (its pixels are given)."""
    from revnet.preprocess.sources.cifar import IMAGE_SIZE, planar_to_hwc

    pixels = np.ascontiguousarray(planar_to_hwc(planar_row[None])[0])
    record = tfrecord.image_example(images.encode_png(pixels), "PNG", IMAGE_SIZE, IMAGE_SIZE, item["filename"],
                                    item["label"], item["text"], coarse_label=item.get("coarse_label"))
    return record, "kept", pixels, None


def _image_record(item: Dict, encode, images, tfrecord):
    """(record, conversion, pixels or None, the file's bytes) of one image file; ImageRejected if it cannot be."""
    data = _read(item, images)
    encoded, pixels = encode(data)
    record = tfrecord.image_example(encoded.encoded, encoded.image_format, encoded.height, encoded.width,
                                    item["filename"], item["label"], item["text"], synset=item["synset"])
    return record, encoded.action, pixels, data


def _read(item: Dict, images) -> bytes:
    try:
        return storage.read_input_file(item["path"], DEFAULT_MAX_FILE_BYTES)
    except storage.NotAnInputFile as error:
        raise images.ImageRejected(str(error)) from None
    except OSError as error:
        raise images.ImageRejected(f"cannot read file: {error}") from None


def _encoder(encoding: Dict, images):
    """`data -> (EncodedImage, pixels or None)` for a task's encoding (pipeline/plan.py IMAGE_STYLES):
    pixels are returned where the dataset records their mean."""
    formats = images.FOLDER_FORMATS if encoding.get("formats") == "folder" else None
    if encoding["kind"] == "square_png":
        return lambda data: images.to_square_png(data, encoding["size"], formats=formats)
    min_side = images.DRAFT_MARGIN * encoding["evaluation_side"] if encoding.get("evaluation_side") else None
    return lambda data: (images.to_rgb_jpeg(data, formats=formats, orient=bool(encoding.get("orient")),
                                            min_side=min_side), None)


def finished_tasks(work_dir: str) -> List[str]:
    """Names of the tasks whose summary is in _done/ (cheap enough to poll for progress)."""
    files, _ = storage.children(storage.join(work_dir, DONE_DIR))
    return [name[:-5] for name in files if name.endswith(".json")]


def read_summary(work_dir: str, name: str) -> Dict:
    return json.loads(storage.read_text(storage.join(work_dir, DONE_DIR, name + ".json")))
