"""`PreprocessConfig`: every `preprocess` option in one frozen dataclass, the only place its defaults live.

`cli.py preprocess` builds one flag per field (common/options.py: type from the annotation, default
from the field, help and bounds from the metadata) and `run_preprocess(config)` takes the object. An
option that only some datasets take is refused, naming its flag, when set for another one. What needs
the file system (does --input exist?) is checked by `pipeline.run.check_arguments`, still before
anything heavy is imported.

Importing this module imports nothing heavy (the CLI builds its flags from it).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from revnet.common.errors import UserError, choose
from revnet.common.options import flag_of, option

DATASETS = ("cifar-10", "cifar-100", "imagenet", "folder")
RUNNERS = ("direct", "dask")
# --image-size of a folder dataset: the input sizes of the model zoo (CIFAR-style 32, ImageNet-style 224).
IMAGE_SIZES = (32, 224)
# The options that apply to some datasets only (every other option applies to all).
DATASET_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "label": ("cifar-100",),
    "download_dir": ("cifar-10", "cifar-100"),
    "val_labels": ("imagenet",),
    "class_names": ("imagenet",),
    "manifest": ("folder",),
    "val_fraction": ("folder",),
    "image_size": ("folder",),
}
MAX_SHARDS = 99999  # the shard name's five digits


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    dataset: str  # the command's DATASET argument
    output_dir: str = dataclasses.field(metadata=option(
        "Dataset folder to create (TFRecord shards, metadata.json, rejects.jsonl), written atomically.",
        flag="--output", path="dir"))
    input_path: Optional[str] = dataclasses.field(default=None, metadata=option(
        "cifar-10/100: the official .tar.gz or its extracted folder [default: download it, MD5-checked]. "
        "imagenet: the folder holding train/<synset>/*.JPEG and val/. folder: DIR/<class>/**/<image>, or "
        "DIR/train/<class>/..., DIR/val/<class>/... (and an optional DIR/test/); see docs/data.md.",
        flag="--input"))
    manifest: Optional[str] = dataclasses.field(default=None, metadata=option(
        "folder: a CSV file of path,label[,split] rows (a header row is optional; relative paths are taken from "
        "--input, or else from the CSV's folder), for images kept outside a class tree.", path="file"))
    val_fraction: float = dataclasses.field(default=0.1, metadata=option(
        "folder without split folders: the fraction of images for validation, chosen by a hash of each file's "
        "relative path (adding files never moves old ones across splits).", min=0, max=1))
    image_size: int = dataclasses.field(default=224, metadata=option(
        "folder: the input size recorded for training and serving. 32: CIFAR-style models (images resized to "
        "32x32 and stored as PNG, the training pixel mean recorded); 224: ImageNet-style models (images stored "
        "as JPEG).", choices=IMAGE_SIZES))
    train_shards: Optional[int] = dataclasses.field(default=None, metadata=option(
        "Training shard files [default: about 128 MB each and at most one per 100 images, within 10..1024].",
        min=1, max=MAX_SHARDS))
    val_shards: Optional[int] = dataclasses.field(default=None, metadata=option(
        "Validation (and test) shard files [default: about 128 MB each and at most one per 100 images, within "
        "2..128].",
        min=1, max=MAX_SHARDS))
    seed: int = dataclasses.field(default=0, metadata=option(
        "Seed of the deterministic shuffle of training examples across shards."))
    label: str = dataclasses.field(default="fine", metadata=option(
        "cifar-100: the label to train on.", choices=("fine", "coarse")))
    val_labels: Optional[str] = dataclasses.field(default=None, metadata=option(
        "imagenet with a flat val/: LOC_val_solution.csv or a file with one synset per line (sorted file names).",
        path="file"))
    label_offset: int = dataclasses.field(default=0, metadata=option(
        "Added to every label; 1 gives the 1..1000 ImageNet convention of the classic TF scripts.", min=0))
    class_names: Optional[str] = dataclasses.field(default=None, metadata=option(
        "imagenet: class texts ('n01440764 tench, ...' per line) [default: INPUT/LOC_synset_mapping.txt or "
        "synset_words.txt if present, else the synset].", path="file"))
    max_reject_fraction: float = dataclasses.field(default=0.01, metadata=option(
        "Fail, publishing nothing and keeping the list of rejects beside --output, if a split rejects more than "
        "this fraction of its inputs and more than --max-rejects.", min=0, max=1))
    max_rejects: int = dataclasses.field(default=3, metadata=option(
        "Rejects a split may have whatever its size (its limit is the larger of this and the fraction).", min=0))
    workers: Optional[int] = dataclasses.field(default=None, metadata=option(
        "Parallel shard writers: forked processes on the local runner, or the size of the Dask LocalCluster "
        "started by --runner dask without --dask-address [default: CPU count, the fastest setting measured by "
        "`benchmark preprocess`].", min=1))
    runner: str = dataclasses.field(default="direct", metadata=option(
        "direct: Beam's local runner. dask: Beam's Dask runner on --dask-address, or on a local cluster of "
        "--workers processes (127.0.0.1) started and stopped here. Other Beam runners: after `--`, e.g. "
        "-- --runner=DataflowRunner.", choices=RUNNERS))
    dask_address: Optional[str] = dataclasses.field(default=None, metadata=option(
        "HOST:PORT (or tcp://HOST:PORT) of a running dask.distributed scheduler, for --runner dask."))
    download_dir: Optional[str] = dataclasses.field(default=None, metadata=option(
        "cifar-10/100: where a downloaded archive is kept [default: ~/.cache/revnet].", path="dir"))
    overwrite: bool = dataclasses.field(default=False, metadata=option(
        "Replace a dataset written by preprocess in --output (a folder holding anything else is refused)."))
    beam_args: Tuple[str, ...] = ()  # Beam pipeline options, given after `--`

    def __post_init__(self):
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        choose("dataset", self.dataset, DATASETS)
        choose(flag_of(PreprocessConfig, "runner"), self.runner, RUNNERS)
        choose(flag_of(PreprocessConfig, "label"), self.label, ("fine", "coarse"))
        choose(flag_of(PreprocessConfig, "image_size"), self.image_size, IMAGE_SIZES)
        defaults = PreprocessConfig.__dataclass_fields__
        for name, datasets in DATASET_OPTIONS.items():
            value = getattr(self, name)
            if self.dataset not in datasets and value != defaults[name].default:
                raise UserError(f"{flag_of(PreprocessConfig, name)} {value} only applies to {' and '.join(datasets)}, "
                                f"not {self.dataset}")
        for name in ("train_shards", "val_shards"):
            count = getattr(self, name)
            if count is not None and not 1 <= count <= MAX_SHARDS:
                raise UserError(f"{flag_of(PreprocessConfig, name)} must be 1..{MAX_SHARDS}, got {count}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be at least 0 and below 1 (1 leaves no training images), "
                            f"got {self.val_fraction}")
        if not 0.0 <= self.max_reject_fraction <= 1.0 or self.max_rejects < 0:
            raise UserError(f"--max-reject-fraction must be within 0..1 and --max-rejects at least 0, got "
                            f"{self.max_reject_fraction} and {self.max_rejects}")
        if self.label_offset < 0 or (self.workers is not None and self.workers < 1):
            raise UserError("--label-offset must be >= 0 and --workers >= 1")

    def replace(self, **changes) -> "PreprocessConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> Dict:
        return dict(dataclasses.asdict(self), beam_args=list(self.beam_args))
