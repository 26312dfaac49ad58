"""The driver's half of the job: list the inputs, fix every record's shard and order, write the tasks.

Every record has a key: a hash of (seed, split, source id) for training, the source id for validation.
The record of rank r (in key order) among N goes to shard floor(r * S / N), in key order within it, so
the output is the same bytes whatever runner executes the tasks and in whatever order.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from revnet.common import storage
from revnet.pipeline.preprocess_config import PreprocessConfig
from revnet.pipeline.shards import TASKS_DIR, task_name
from revnet.preprocess.tfrecord import SPLITS


class ImageStyle(NamedTuple):
    """What a dataset's image size means: the model family whose training augmentation and evaluation
    preprocessing fit it (train/train_config.py RECIPES, models/registry.py), and how its records store images."""
    model_family: str
    image_format: str
    encoding: Dict[str, object]  # how a shard worker encodes an image file (pipeline/shards.py)


# A folder dataset's 224 images keep their own size, reduced by 2, 4 or 8 (for a JPEG: decoded at that DCT
# scale, as the server decodes requests) when both sides are at least twice DRAFT_MARGIN * 256, the 256 being
# the shorter side evaluation resizes a 224 input from. "formats": "folder" is preprocess.images.FOLDER_FORMATS.
IMAGE_STYLES: Dict[int, ImageStyle] = {
    32: ImageStyle("cifar", "PNG", {"kind": "square_png", "size": 32, "formats": "folder"}),
    224: ImageStyle("imagenet", "JPEG", {"kind": "jpeg", "orient": True, "evaluation_side": 256, "formats": "folder"}),
}
IMAGENET_ENCODING = {"kind": "jpeg"}  # ILSVRC2012 as the classic TF scripts store it: files kept or re-encoded


def style_metadata(image_size: int) -> Dict[str, object]:
    """metadata.json's description of the images: what the trainer picks augmentation and preprocessing by."""
    style = IMAGE_STYLES[image_size]
    return {"image_size": image_size, "image_format": style.image_format, "model_family": style.model_family,
            "augmentation": style.model_family, "preprocessing": style.model_family}


@dataclass
class Plan:
    """Inputs per split in source order (labels resolved), what listing already rejected or skipped, label tables."""
    input_path: str
    items: Dict[str, List[dict]]
    label_names: List[str]
    rows: Optional[Dict[str, np.ndarray]] = None  # CIFAR: channel-planar pixels, row i <-> items[split][i]
    rejects: List[dict] = field(default_factory=list)
    synsets: Optional[List[str]] = None
    extra: Dict[str, object] = field(default_factory=dict)
    estimated_bytes: Dict[str, int] = field(default_factory=dict)  # of each split's records, for the shard count
    splits: Tuple[str, ...] = SPLITS
    skips: List[dict] = field(default_factory=list)  # {"path", "split", "reason"}: clearly not images, not read
    encoding: Dict[str, object] = field(default_factory=lambda: dict(IMAGENET_ENCODING))
    digests: bool = False  # workers record each written input's content hash (duplicates across splits)

    def read_counts(self) -> Dict[str, int]:
        return {split: len(self.items[split]) + sum(1 for r in self.rejects + self.skips if r["split"] == split)
                for split in self.splits}


# Default shard counts: about SHARD_BYTES of records per file, at most one file per IMAGES_PER_SHARD images,
# and (when there are that many images) at least enough files for parallel reads, at most the classic
# ImageNet layout: 10..1024 training and 2..128 validation (or test) files.
SHARD_BYTES = 128 << 20
IMAGES_PER_SHARD = 100
SHARD_RANGE = {"train": (10, 1024), "evaluation": (2, 128)}


def default_shards(split: str, images: int, estimated_bytes: int) -> int:
    """The shard count of a split of `images` inputs whose records take about `estimated_bytes`."""
    low, high = SHARD_RANGE["train" if split == "train" else "evaluation"]
    by_size = max(low, -(-estimated_bytes // SHARD_BYTES))
    return max(1, min(high, images // IMAGES_PER_SHARD, by_size))


def shard_counts(plan: Plan, train_shards: Optional[int], eval_shards: Optional[int]) -> Dict[str, int]:
    """Each split's shard count: as given (--val-shards for every evaluation split), else the default."""
    counts = {}
    for split in plan.splits:
        given = train_shards if split == "train" else eval_shards
        images = len(plan.items[split])
        counts[split] = given or default_shards(split, images, plan.estimated_bytes.get(split, 0))
    return counts


def estimate_bytes(paths: List[str], samples: int = 32) -> int:
    """The total size of `paths`, from the mean size of up to `samples` of them spread over the list (a
    size on an object store costs a request)."""
    if not paths:
        return 0
    step = max(1, len(paths) // samples)
    sizes = [size for size in (storage.file_size(path) for path in paths[::step][:samples]) if size is not None]
    return int(len(paths) * sum(sizes) / len(sizes)) if sizes else 0


def order_key(seed: int, split: str, source_id: str) -> Tuple[str, str]:
    """Sort key of one record: training records are shuffled by a seeded hash, validation keeps input order."""
    if split == "train":
        digest = hashlib.sha256(f"{seed}\x00{split}\x00{source_id}".encode("utf-8")).hexdigest()[:32]
        return (digest, source_id)
    return ("", source_id)


def shard_positions(source_ids: List[str], seed: int, split: str, num_shards: int) -> List[List[int]]:
    """For each shard, the positions (into `source_ids`) of its records, in write order."""
    ranked = sorted(range(len(source_ids)), key=lambda i: order_key(seed, split, source_ids[i]))
    shards: List[List[int]] = [[] for _ in range(num_shards)]
    for rank, position in enumerate(ranked):
        shards[rank * num_shards // len(ranked)].append(position)
    return shards


def check_cifar(config: PreprocessConfig) -> None:
    from revnet.preprocess.sources import cifar

    cifar.check_input(config.dataset, config.input_path)


def plan_cifar(config: PreprocessConfig) -> Plan:
    from revnet.preprocess.sources import cifar

    dataset, label, label_offset = config.dataset, config.label, config.label_offset
    spec = cifar.SPECS[dataset]
    input_path = cifar.resolve_input(dataset, config.input_path, config.download_dir)
    members = cifar.split_members(spec)
    raw = cifar.read_members(input_path, spec, [spec.meta_file] + [m for s in SPLITS for m in members[s]])
    tables = cifar.parse_meta(raw.pop(spec.meta_file), spec, spec.meta_file)
    num_classes = {key: len(values) for key, values in tables.items()}
    label_key = spec.label_keys[0] if label == "fine" else "coarse_labels"
    items: Dict[str, List[dict]] = {}
    rows: Dict[str, np.ndarray] = {}
    for split in SPLITS:
        items[split], pixels = [], []
        for member in members[split]:
            batch = cifar.parse_batch(raw.pop(member), spec, f"{spec.folder}/{member}", num_classes)
            for index, filename, _, labels in cifar.iter_batch(batch):
                item = {"source_id": f"{member}:{index:06d}", "filename": filename,
                        "label": labels[label_key] + label_offset, "text": tables[label_key][labels[label_key]]}
                if "coarse_labels" in labels:
                    item["coarse_label"] = labels["coarse_labels"]
                items[split].append(item)
            pixels.append(batch["data"])
        rows[split] = np.concatenate(pixels) if pixels else np.zeros((0, cifar.ROW_BYTES), np.uint8)
    extra = {"coarse_label_names": tables["coarse_labels"]} if dataset == "cifar-100" else {}
    return Plan(input_path, items, tables[label_key], rows=rows, extra={**style_metadata(cifar.IMAGE_SIZE), **extra},
                estimated_bytes={split: len(items[split]) * cifar.ROW_BYTES for split in SPLITS})


def check_imagenet(config: PreprocessConfig) -> None:
    from revnet.preprocess.sources import imagenet

    imagenet.check_input(config.input_path, config.val_labels, config.class_names)


def plan_imagenet(config: PreprocessConfig) -> Plan:
    from revnet.preprocess.sources import imagenet

    listing = imagenet.list_imagenet(config.input_path, config.val_labels, config.label_offset, config.class_names)
    items = {split: [{"source_id": item.source_id, "filename": storage.basename(item.path),
                      "path": item.path if storage.is_remote(item.path) else os.path.abspath(item.path),
                      "label": item.label, "synset": item.synset, "text": item.text}
                     for item in listing.items[split]] for split in SPLITS}
    rejects = [{"path": reject.path, "split": reject.split, "reason": reject.reason} for reject in listing.rejects]
    return Plan(config.input_path, items, listing.texts, rejects=rejects, synsets=listing.synsets,
                extra=style_metadata(224),
                estimated_bytes={split: estimate_bytes([item["path"] for item in items[split]]) for split in SPLITS})


def check_folder(config: PreprocessConfig) -> None:
    from revnet.preprocess.sources import folder

    folder.check_input(config.input_path, config.manifest, _val_fraction_given(config))


def _val_fraction_given(config: PreprocessConfig) -> bool:
    return config.val_fraction != PreprocessConfig.__dataclass_fields__["val_fraction"].default


def plan_folder(config: PreprocessConfig) -> Plan:
    from revnet.preprocess.sources import folder

    listing = folder.list_folder(config.input_path, config.manifest, config.val_fraction, _val_fraction_given(config))
    label_of = {name: index + config.label_offset for index, name in enumerate(listing.class_names)}
    items = {split: [{"source_id": item.source_id, "filename": item.source_id, "path": item.path,
                      "label": label_of[item.class_name], "text": item.class_name, "synset": None}
                     for item in listing.items[split]] for split in listing.splits}
    size = config.image_size
    style = IMAGE_STYLES[size]
    estimated = {split: (len(items[split]) * size * size * 3 if style.image_format == "PNG"
                         else estimate_bytes([item["path"] for item in items[split]])) for split in listing.splits}
    return Plan(config.input_path, items, listing.class_names, rejects=listing.rejects,
                extra={**style_metadata(size), "layout": listing.layout}, estimated_bytes=estimated,
                splits=listing.splits, skips=listing.skips, encoding=style.encoding, digests=True)


class Source(NamedTuple):
    """How a dataset is read: a cheap check of its inputs (before anything heavy) and its planner."""
    check: Callable[[PreprocessConfig], None]
    plan: Callable[[PreprocessConfig], Plan]


SOURCES: Dict[str, Source] = {"cifar-10": Source(check_cifar, plan_cifar), "cifar-100": Source(check_cifar, plan_cifar),
                              "imagenet": Source(check_imagenet, plan_imagenet),
                              "folder": Source(check_folder, plan_folder)}


def write_tasks(work_dir: str, plan: Plan, seed: int, shard_files: Dict[str, List[str]]) -> List[str]:
    """Write one task file per output shard into work_dir/_tasks; returns the task names."""
    storage.makedirs(storage.join(work_dir, TASKS_DIR))
    jobs = []
    for split in plan.splits:
        source_ids = [item["source_id"] for item in plan.items[split]]
        for shard, positions in enumerate(shard_positions(source_ids, seed, split, len(shard_files[split]))):
            name = task_name(split, shard)
            task = {"split": split, "shard": shard, "file": shard_files[split][shard], "encoding": plan.encoding,
                    "digests": plan.digests,
                    "items": [dict(plan.items[split][p], row=row) if plan.rows is not None else plan.items[split][p]
                              for row, p in enumerate(positions)]}
            pixels = None
            if plan.rows is not None:
                task["pixels"] = name + ".npy"
                pixels = plan.rows[split][positions] if positions else plan.rows[split][:0]
            jobs.append((name, task, pixels))

    def write(job):
        name, task, pixels = job
        if pixels is not None:
            buffer = io.BytesIO()
            np.save(buffer, pixels)
            storage.write_bytes(storage.join(work_dir, TASKS_DIR, task["pixels"]), buffer.getvalue())
        storage.write_bytes(storage.join(work_dir, TASKS_DIR, name + ".json"), json.dumps(task).encode("utf-8"))
        return name

    # Object stores take tens of milliseconds per file: write the (thousand or so) tasks concurrently.
    with ThreadPoolExecutor(16 if storage.is_remote(work_dir) else 1) as pool:
        return list(pool.map(write, jobs))
