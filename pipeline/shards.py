"""One shard, start to finish, in one worker: read its inputs, decode, check, encode, write the TFRecord.

The driver (pipeline/plan.py) writes one task file per output shard into the work folder: the shard's
inputs in their final order, with labels resolved (and, for CIFAR, the shard's pixel rows beside it as
.npy). A worker turns a task into the shard file and a small summary (counts, rejects, conversions,
pixel sums) written to `_done/`. Only task names move through the runner; image bytes never do.

Imports neither Beam nor TensorFlow, so Beam SDK harnesses, Dask workers and forked local workers
start quickly; the records are byte-identical to TensorFlow's (preprocess/tfrecord.py).
"""
from __future__ import annotations

import io
import json
from typing import Dict, List

import numpy as np

from revnet.common import storage

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
    rejects: List[Dict] = []
    converted: Dict[str, int] = {}
    # Exact integer sums (at most 5e4 * 255 per value): the mean is the same whatever the shard order.
    pixel_sum = rows.sum(axis=0, dtype=np.int64) if rows is not None else None
    written = 0
    # The whole file is rewritten (and appears only when complete), so a retried task is harmless.
    with storage.create(storage.join(work_dir, task["file"])) as handle:
        for item in task["items"]:
            if rows is not None:
                record = _cifar_record(item, rows[item["row"]], images, tfrecord)
            else:
                try:
                    record, action = _image_record(item, images, tfrecord)
                except images.ImageRejected as error:
                    rejects.append({"path": item["path"], "split": task["split"], "reason": str(error)})
                    continue
                if action != "kept":
                    converted[action] = converted.get(action, 0) + 1
            tfrecord.write_record(handle, record)
            written += 1
    summary = {"task": name, "split": task["split"], "shard": task["shard"], "file": task["file"],
               "read": len(task["items"]), "records": written, "rejects": rejects, "converted": converted,
               "pixel_sum": pixel_sum.tolist() if pixel_sum is not None else None}
    storage.write_bytes(storage.join(work_dir, DONE_DIR, name + ".json"), json.dumps(summary).encode("utf-8"))
    return summary


def _cifar_record(item: Dict, planar_row: np.ndarray, images, tfrecord) -> bytes:
    from revnet.preprocess.sources.cifar import IMAGE_SIZE, planar_to_hwc

    pixels = np.ascontiguousarray(planar_to_hwc(planar_row[None])[0])
    return tfrecord.image_example(images.encode_png(pixels), "PNG", IMAGE_SIZE, IMAGE_SIZE, item["filename"],
                                  item["label"], item["text"], coarse_label=item.get("coarse_label"))


def _image_record(item: Dict, images, tfrecord):
    try:
        data = storage.read_input_file(item["path"], images.DEFAULT_MAX_FILE_BYTES)
    except storage.NotAnInputFile as error:
        raise images.ImageRejected(str(error)) from None
    except OSError as error:
        raise images.ImageRejected(f"cannot read file: {error}") from None
    encoded = images.to_rgb_jpeg(data)
    record = tfrecord.image_example(encoded.encoded, encoded.image_format, encoded.height, encoded.width,
                                    item["filename"], item["label"], item["text"], synset=item["synset"])
    return record, encoded.action


def finished_tasks(work_dir: str) -> List[str]:
    """Names of the tasks whose summary is in _done/ (cheap enough to poll for progress)."""
    files, _ = storage.children(storage.join(work_dir, DONE_DIR))
    return [name[:-5] for name in files if name.endswith(".json")]


def read_summary(work_dir: str, name: str) -> Dict:
    return json.loads(storage.read_text(storage.join(work_dir, DONE_DIR, name + ".json")))
