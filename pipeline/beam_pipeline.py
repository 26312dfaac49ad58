"""The Beam graph: manifest -> decode/check/encode -> deterministic shards -> TFRecord files.

    ReadFromText(_manifest.jsonl) -> Expand (a CIFAR batch file -> its rows) -> AssignShard
        -> GroupByKey (split, shard) -> EncodeShard -> shard record counts -> _shards.json
                                                    -> rejects {path, split, reason} -> rejects.jsonl

The driver (pipeline/run.py) lists the inputs into the manifest and fixes the shard boundaries, so the
graph holds no data and runs unchanged on any runner that can read the manifest's folder. Every record
has a key: a hash of (seed, split, source id) for training, the source id for validation. A record's
shard is found by bisecting the boundaries, and records are written in key order within a shard, so
re-runs give byte-identical files whatever order the runner processes them in.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import posixpath
import sys
import time
from typing import Dict, List, Sequence, Tuple

import logging


class _DropApitoolsNotice(logging.Filter):
    # Beam's GCP module logs this on the root logger at import time whether or not GCP is ever used.
    def filter(self, record):
        return "apitools not found" not in str(record.msg)


logging.getLogger().addFilter(_DropApitoolsNotice())

import apache_beam as beam  # noqa: E402 - after the filter above
from apache_beam.metrics import Metrics  # noqa: E402

MANIFEST_FILE = "_manifest.jsonl"
SHARDS_FILE = "_shards.json"
METRICS_NAMESPACE = "preprocess"


def order_key(seed: int, split: str, source_id: str) -> Tuple[str, str]:
    """Sort key of one record: training records are shuffled by a seeded hash, validation keeps input order."""
    if split == "train":
        digest = hashlib.sha256(f"{seed}\x00{split}\x00{source_id}".encode("utf-8")).hexdigest()[:32]
        return (digest, source_id)
    return ("", source_id)


def shard_boundaries(keys: Sequence[Tuple[str, str]], num_shards: int) -> List[Tuple[str, str]]:
    """The first key of shards 1..S-1 so that the record of rank r lands in shard floor(r * S / N)."""
    ordered = sorted(keys)
    count = len(ordered)
    bounds = []
    for shard in range(1, num_shards):
        first_rank = -(-shard * count // num_shards)  # ceil(shard * N / S)
        bounds.append(ordered[first_rank] if first_rank < count else (chr(0x10FFFF), ""))
    return bounds


def shard_of(boundaries: Sequence[Tuple[str, str]], key: Tuple[str, str]) -> int:
    return bisect.bisect_right(boundaries, tuple(key))


def _read_bytes(path: str) -> bytes:
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def _create(path: str):
    if "://" in path:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.create(path, compression_type="uncompressed")
    return open(path, "wb")


def _write_bytes(path: str, data: bytes) -> None:
    with _create(path) as handle:
        handle.write(data)


class _Progress:
    """Records processed and rate on stderr, at most once a second, only when stderr is a terminal."""

    def __init__(self):
        self.count = self.rejected = 0
        self.start = self.last = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def tick(self, rejected: bool) -> None:
        self.count += 1
        self.rejected += int(rejected)
        if self.enabled and time.monotonic() - self.last >= 1.0:
            self._show("")

    def finish(self) -> None:
        if self.enabled and self.count:
            self._show("\n")

    def _show(self, end: str) -> None:
        self.last = now = time.monotonic()
        rate = self.count / max(now - self.start, 1e-9)
        sys.stderr.write(f"\rpreprocess [worker {os.getpid()}]: {self.count} records "
                         f"({self.rejected} rejected), {rate:.0f} records/s {end}")
        sys.stderr.flush()


class ExpandInputs(beam.DoFn):
    """A manifest line -> input rows: a CIFAR batch file becomes one row per image; image files pass through."""

    def __init__(self, dataset: str, input_path: str):
        self.dataset, self.input_path = dataset, input_path

    def process(self, line: str):
        item = json.loads(line)
        if item["kind"] == "file":
            yield item
            return
        from revnet.preprocess import cifar

        spec = cifar.SPECS[self.dataset]
        member = item["member"]
        data = cifar.read_members(self.input_path, spec, [member])[member]
        batch = cifar.parse_batch(data, spec, member, item["num_classes"])
        for index, filename, _, labels in cifar.iter_batch(batch):
            yield {"kind": "cifar", "split": item["split"], "source_id": f"{member}:{index:06d}",
                   "filename": filename, "pixels": batch["data"][index].tobytes(), "labels": labels}


def assign_shard(item: dict, seed: int, boundaries: Dict[str, list]):
    """((split, shard), (key, item)): only the small input description travels through the shuffle."""
    key = order_key(seed, item["split"], item["source_id"])
    return (item["split"], shard_of(boundaries[item["split"]], key)), (key, item)


class EncodeShard(beam.DoFn):
    """Decode, check and encode the inputs of one shard in key order, straight into its TFRecord file.

    Encoding after the shuffle keeps image bytes inside one worker (read, encode, write) instead of
    sending every encoded image through the runner. Emits the shard's record count, and one reject
    {path, split, reason} per input that is not an image.
    """

    REJECTS = "rejects"

    def __init__(self, output_dir: str, shard_files: Dict[str, List[str]], label_key: str,
                 label_names: Dict[str, List[str]], label_offset: int = 0):
        self.output_dir, self.shard_files = output_dir, shard_files
        self.label_key, self.label_names, self.label_offset = label_key, label_names, label_offset

    def setup(self):
        self.progress = _Progress()
        self.counters = {}

    def teardown(self):
        if getattr(self, "progress", None) is not None:
            self.progress.finish()

    def _count(self, split: str, what: str, amount: int = 1) -> None:
        name = f"{split}_{what}"
        if name not in self.counters:
            self.counters[name] = Metrics.counter(METRICS_NAMESPACE, name)
        self.counters[name].inc(amount)

    def process(self, element):
        from revnet.preprocess import images, tfrecord

        (split, shard), keyed_items = element
        name = self.shard_files[split][shard]
        written = 0
        # Rewriting the whole file makes a retried bundle harmless (the output is the same bytes).
        with _create(posixpath.join(self.output_dir, name) if "://" in self.output_dir
                     else os.path.join(self.output_dir, name)) as handle:
            for _, item in sorted(keyed_items, key=lambda keyed: keyed[0]):
                self._count(split, "read")
                try:
                    if item["kind"] == "cifar":
                        example = self._cifar_example(item, images, tfrecord)
                    else:
                        example, action = self._image_example(item, images, tfrecord)
                        if action != "kept":
                            self._count(split, f"converted_{action}")
                except images.ImageRejected as error:
                    self._count(split, "rejected")
                    self.progress.tick(rejected=True)
                    yield beam.pvalue.TaggedOutput(self.REJECTS, {"path": item.get("path", item["source_id"]),
                                                                  "split": split, "reason": str(error)})
                    continue
                tfrecord.write_record(handle, example)
                written += 1
                self.progress.tick(rejected=False)
        self._count(split, "written", written)
        yield {"split": split, "shard": shard, "file": name, "records": written}

    def _cifar_example(self, item, images, tfrecord):
        import numpy as np

        from revnet.preprocess.cifar import IMAGE_SIZE, planar_to_hwc

        pixels = planar_to_hwc(np.frombuffer(item["pixels"], dtype=np.uint8)[None])[0]
        labels = item["labels"]
        label = labels[self.label_key]
        return tfrecord.image_example(images.encode_png(np.ascontiguousarray(pixels)), "PNG", IMAGE_SIZE, IMAGE_SIZE,
                                      item["filename"], label + self.label_offset,
                                      self.label_names[self.label_key][label], coarse_label=labels.get("coarse_labels"))

    def _image_example(self, item, images, tfrecord):
        try:
            data = _read_bytes(item["path"])
        except OSError as error:
            raise images.ImageRejected(f"cannot read file: {error}") from None
        encoded = images.to_rgb_jpeg(data)
        example = tfrecord.image_example(encoded.encoded, encoded.image_format, encoded.height, encoded.width,
                                         posixpath.basename(item["path"]), item["label"], item["text"],
                                         synset=item["synset"])
        return example, encoded.action


def _write_shard_list(shards, path: str):
    _write_bytes(path, json.dumps(sorted(shards, key=lambda s: s["file"])).encode())


def _write_rejects(rejects, path: str):
    lines = sorted(json.dumps(r, sort_keys=True) for r in rejects)
    _write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def build(pipeline: beam.Pipeline, *, dataset: str, input_path: str, work_dir: str, seed: int,
          boundaries: Dict[str, list], shard_files: Dict[str, List[str]], label_key: str,
          label_names: Dict[str, List[str]], label_offset: int = 0, rejects_file: str = "rejects.jsonl") -> None:
    join = posixpath.join if "://" in work_dir else os.path.join
    results = (pipeline
               | "ReadManifest" >> beam.io.ReadFromText(join(work_dir, MANIFEST_FILE))
               | "Expand" >> beam.ParDo(ExpandInputs(dataset, input_path))
               | "AssignShard" >> beam.Map(assign_shard, seed, boundaries)
               | "GroupShards" >> beam.GroupByKey()
               | "EncodeShards" >> beam.ParDo(EncodeShard(work_dir, shard_files, label_key, label_names,
                                                          label_offset)).with_outputs(EncodeShard.REJECTS,
                                                                                      main="shards"))
    (results.shards
     | "ListShards" >> beam.combiners.ToList()
     | "WriteShardList" >> beam.Map(_write_shard_list, join(work_dir, SHARDS_FILE)))
    (results[EncodeShard.REJECTS]
     | "ListRejects" >> beam.combiners.ToList()
     | "WriteRejects" >> beam.Map(_write_rejects, join(work_dir, rejects_file)))
