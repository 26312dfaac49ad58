"""The preprocessing driver: check the inputs, plan the shards, run the Beam graph, publish atomically.

Everything that can be wrong with the input (missing or wrong archive, hostile or misshapen pickles,
unknown validation synsets, a finished dataset in the way) is found here, before the pipeline starts,
and raised as a one-line UserError. The output is built in a temporary sibling folder and renamed into
place only after the counts reconcile; metadata.json ("complete": true) is its last file.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from revnet.common.errors import UserError, choose
from revnet.pipeline import beam_pipeline, storage

log = logging.getLogger(__name__)

DEFAULT_SHARDS = {"cifar-10": (10, 2), "cifar-100": (10, 2), "imagenet": (1024, 128)}
DATASETS = tuple(DEFAULT_SHARDS)
SPLITS = ("train", "validation")


@dataclass
class Plan:
    """What the driver found: the manifest lines, every record's source id, and the label tables."""
    input_path: str
    manifest: List[dict]
    source_ids: Dict[str, List[str]]
    label_names: List[str]
    label_key: str = "label"
    label_tables: Dict[str, List[str]] = field(default_factory=dict)
    synsets: Optional[List[str]] = None
    extra: Dict[str, object] = field(default_factory=dict)


def _plan_cifar(dataset: str, input_path: Optional[str], label: str, download_dir: Optional[str]) -> Plan:
    from revnet.preprocess import cifar

    spec = cifar.SPECS[dataset]
    input_path = cifar.resolve_input(dataset, input_path, download_dir)
    members = cifar.split_members(spec)
    names = [spec.meta_file] + [m for split in SPLITS for m in members[split]]
    raw = cifar.read_members(input_path, spec, names)
    tables = cifar.parse_meta(raw[spec.meta_file], spec, spec.meta_file)
    num_classes = {key: len(values) for key, values in tables.items()}
    manifest, source_ids = [], {split: [] for split in SPLITS}
    for split in SPLITS:
        for member in members[split]:
            batch = cifar.parse_batch(raw.pop(member), spec, f"{spec.folder}/{member}", num_classes)
            source_ids[split].extend(f"{member}:{index:06d}" for index in range(len(batch["filenames"])))
            manifest.append({"kind": "cifar", "split": split, "member": member, "num_classes": num_classes})
    label_key = spec.label_keys[0] if label == "fine" else "coarse_labels"
    extra = {"coarse_label_names": tables["coarse_labels"]} if dataset == "cifar-100" else {}
    return Plan(input_path, manifest, source_ids, tables[label_key], label_key, tables, None,
                {"image_format": "PNG", "image_size": cifar.IMAGE_SIZE, **extra})


def _plan_imagenet(input_path: Optional[str], val_labels: Optional[str], label_offset: int,
                   class_names: Optional[str]) -> Plan:
    from revnet.preprocess import imagenet

    if not input_path:
        raise UserError("imagenet needs --input: the extracted ILSVRC2012 folder with train/<synset>/*.JPEG "
                        "(it cannot be downloaded automatically)")
    synsets, texts, items = imagenet.list_imagenet(input_path, val_labels, label_offset, class_names)
    manifest = [{"kind": "file", "split": item.split, "source_id": item.source_id, "path": item.path if "://" in item.path else os.path.abspath(item.path),
                 "label": item.label, "synset": item.synset, "text": item.text}
                for split in SPLITS for item in items[split]]
    source_ids = {split: [item.source_id for item in items[split]] for split in SPLITS}
    return Plan(input_path, manifest, source_ids, texts, synsets=synsets,
                extra={"image_format": "JPEG", "image_size": None})


def _check_output(output_dir: str, overwrite: bool) -> None:
    if os.path.isfile(output_dir):
        raise UserError(f"--output {output_dir!r} is a file; expected a folder path")
    names = storage.list_names(output_dir)
    if "metadata.json" in names and not overwrite:
        raise UserError(f"{output_dir!r} already holds a finished dataset; pass --overwrite to replace it")
    if names and not overwrite:
        raise UserError(f"--output {output_dir!r} is not empty; choose a new folder or pass --overwrite")


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _refuse_unknown_beam_args(args: Sequence[str]) -> None:
    """Beam only logs and drops arguments it does not know; a mistyped option must not vanish silently."""
    from apache_beam.options.pipeline_options import PipelineOptions

    capture, beam_log = _Capture(), logging.getLogger("apache_beam.options.pipeline_options")
    beam_log.addHandler(capture)
    try:
        PipelineOptions(list(args)).get_all_options()
    finally:
        beam_log.removeHandler(capture)
    unknown = [m.split(":", 1)[1].strip() for m in capture.messages if "unparseable args" in m]
    if unknown:
        raise UserError(f"unknown option(s) {unknown[0]}: preprocess options go before `--`, Beam pipeline "
                        f"options (--runner, --project, --direct_num_workers...) after it")


def _beam_options(beam_args: Sequence[str], workers: int):
    """(runner or None, PipelineOptions, the effective args). Local runs use Beam's FnApiRunner directly:
    the DirectRunner would first try the Prism runner, which downloads a binary from GitHub."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(beam_args)
    _refuse_unknown_beam_args(args)
    runner = PipelineOptions(args).view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct"):
        return None, PipelineOptions(args), args
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if not any(a.startswith("--direct_num_workers") for a in args):
        args.append(f"--direct_num_workers={workers}")
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # worker processes' INFO chatter off stderr
    if not any(a.startswith("--direct_running_mode") for a in args):
        args.append(f"--direct_running_mode={'multi_processing' if workers > 1 else 'in_memory'}")
    # Worker start-up notices ("No semi_persistent_directory found") are not for the user; errors still show.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    return FnApiRunner(), PipelineOptions(args), args


def _counter_values(result) -> Dict[str, int]:
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # noqa: BLE001 - metrics are best effort on some runners
        return {}
    values: Dict[str, int] = {}
    for counter in counters:
        if counter.key.metric.namespace == beam_pipeline.METRICS_NAMESPACE:
            name = counter.key.metric.name
            values[name] = values.get(name, 0) + int(counter.committed or counter.attempted or 0)
    return values


def _read_outputs(work_dir: str, num_shards: Dict[str, int]):
    from revnet.preprocess.schema import REJECTS_FILE, shard_name

    listed = json.loads(storage.read_text(storage.join(work_dir, beam_pipeline.SHARDS_FILE)))
    written = {item["file"]: item["records"] for item in listed}
    shards = {}
    for split in SPLITS:
        shards[split] = []
        for index in range(num_shards[split]):
            name = shard_name(split, index, num_shards[split])
            if name not in written:  # no record fell in this shard: an empty (valid) TFRecord file
                storage.write_bytes(storage.join(work_dir, name), b"")
            shards[split].append({"file": name, "records": written.get(name, 0)})
    rejects = [json.loads(line) for line in storage.read_text(storage.join(work_dir, REJECTS_FILE)).splitlines()
               if line.strip()]
    return shards, rejects


def run_preprocess(dataset: str, input_path: Optional[str], output_dir: str, *, train_shards: Optional[int] = None,
                   val_shards: Optional[int] = None, seed: int = 0, label: str = "fine",
                   val_labels: Optional[str] = None, label_offset: int = 0, class_names: Optional[str] = None,
                   max_reject_fraction: float = 0.001, workers: Optional[int] = None, overwrite: bool = False,
                   beam_args: Sequence[str] = (), download_dir: Optional[str] = None) -> Dict:
    """Turn a raw dataset into sharded TFRecords + metadata.json in `output_dir`; returns the metadata."""
    choose("dataset", dataset, DATASETS)
    _refuse_unknown_beam_args(beam_args)
    choose("label", label, ("fine", "coarse"))
    if label == "coarse" and dataset != "cifar-100":
        raise UserError(f"--label coarse only applies to cifar-100, not {dataset}")
    if val_labels and dataset != "imagenet":
        raise UserError("--val-labels only applies to imagenet")
    defaults = DEFAULT_SHARDS[dataset]
    num_shards = {"train": train_shards or defaults[0], "validation": val_shards or defaults[1]}
    for split, count in num_shards.items():
        if count < 1 or count > 99999:
            raise UserError(f"{split} shard count must be 1..99999, got {count}")
    if not 0.0 <= max_reject_fraction <= 1.0:
        raise UserError(f"--max-reject-fraction must be within 0..1, got {max_reject_fraction}")
    workers = workers or os.cpu_count() or 1
    if label_offset < 0 or workers < 1:
        raise UserError("--label-offset must be >= 0 and --workers >= 1")
    if not storage.is_remote(output_dir):
        output_dir = os.path.abspath(output_dir)
    _check_output(output_dir, overwrite)

    if dataset == "imagenet":
        plan = _plan_imagenet(input_path, val_labels, label_offset, class_names)
    else:
        plan = _plan_cifar(dataset, input_path, label, download_dir)
    read = {split: len(plan.source_ids[split]) for split in SPLITS}
    log.info("%s: %d training and %d validation inputs from %s", dataset, read["train"], read["validation"],
             plan.input_path)
    boundaries = {split: beam_pipeline.shard_boundaries(
        [beam_pipeline.order_key(seed, split, source_id) for source_id in plan.source_ids[split]], num_shards[split])
        for split in SPLITS}

    if not storage.is_remote(output_dir):
        os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    work_dir = storage.temp_sibling(output_dir, "tmp")
    try:
        metadata = _run_in(work_dir, dataset, plan, num_shards, boundaries, read, seed=seed, label=label,
                           label_offset=label_offset, max_reject_fraction=max_reject_fraction, workers=workers,
                           beam_args=beam_args, output_dir=output_dir)
        storage.publish(work_dir, output_dir, "metadata.json")  # schema.METADATA_FILE
    except BaseException:
        storage.remove_tree(work_dir)
        raise
    log.info("wrote %s", output_dir)
    return metadata


def _run_in(work_dir, dataset, plan: Plan, num_shards, boundaries, read, *, seed, label, label_offset,
            max_reject_fraction, workers, beam_args, output_dir) -> Dict:
    import apache_beam as beam

    from revnet.preprocess.schema import METADATA_FILE, REJECTS_FILE, shard_name

    storage.write_bytes(storage.join(work_dir, beam_pipeline.MANIFEST_FILE),
                        "".join(json.dumps(line, sort_keys=True) + "\n" for line in plan.manifest).encode("utf-8"))
    runner, options, effective_args = _beam_options(beam_args, workers)
    label_tables = dict(plan.label_tables)
    started = time.monotonic()
    pipeline = beam.Pipeline(runner=runner, options=options)
    beam_pipeline.build(pipeline, dataset=dataset, input_path=plan.input_path, work_dir=work_dir, seed=seed,
                        boundaries=boundaries, label_key=plan.label_key, label_names=label_tables,
                        label_offset=label_offset, rejects_file=REJECTS_FILE,
                        shard_files={split: [shard_name(split, i, count) for i in range(count)]
                                     for split, count in num_shards.items()})
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.monotonic() - started
    counters = _counter_values(result)
    shards, rejects = _read_outputs(work_dir, num_shards)
    splits = {}
    for split in SPLITS:
        written = sum(shard["records"] for shard in shards[split])
        rejected = sum(1 for r in rejects if r["split"] == split)
        if written + rejected != read[split]:
            raise RuntimeError(f"{split}: read {read[split]} inputs but wrote {written} and rejected {rejected}; "
                               f"records were lost, the output is not published")
        splits[split] = {"read": read[split], "written": written, "rejected": rejected, "shards": shards[split],
                         "converted": {name[len(split) + 11:]: value for name, value in counters.items()
                                       if name.startswith(f"{split}_converted_")}}
    for split, counts in splits.items():
        if counts["read"] and counts["rejected"] / counts["read"] > max_reject_fraction:
            kept = f"{output_dir}.rejects.jsonl"
            storage.write_bytes(kept, storage.read_text(storage.join(work_dir, REJECTS_FILE)).encode("utf-8"))
            raise UserError(f"{split}: {counts['rejected']} of {counts['read']} inputs rejected, more than "
                            f"--max-reject-fraction {max_reject_fraction}; see {kept}")
    for scratch in (beam_pipeline.MANIFEST_FILE, beam_pipeline.SHARDS_FILE):
        storage.remove(storage.join(work_dir, scratch))
    metadata = {
        "dataset": dataset, "num_classes": len(plan.label_names), "label_names": plan.label_names,
        "synsets": plan.synsets, "label_offset": label_offset, "label": label if dataset == "cifar-100" else None,
        "splits": splits, "complete": True, "seconds": round(seconds, 2), "beam_counters": counters,
        "options": {"input": plan.input_path, "train_shards": num_shards["train"],
                    "val_shards": num_shards["validation"], "seed": seed, "label_offset": label_offset,
                    "max_reject_fraction": max_reject_fraction, "workers": workers,
                    "beam_args": list(effective_args)},
        **plan.extra,
    }
    # Last file of the folder: its presence with "complete": true is what marks a finished dataset.
    storage.write_bytes(storage.join(work_dir, METADATA_FILE),
                        (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return metadata


def format_summary(metadata: Dict, output_dir: str) -> str:
    """A short table of the per-split counts for the terminal."""
    lines = [f"{metadata['dataset']} -> {os.path.abspath(output_dir)} ({metadata['num_classes']} classes, "
             f"{metadata['seconds']:.1f} s)",
             f"{'split':<12}{'read':>10}{'written':>10}{'rejected':>10}{'shards':>8}"]
    for split, counts in metadata["splits"].items():
        lines.append(f"{split:<12}{counts['read']:>10}{counts['written']:>10}{counts['rejected']:>10}"
                     f"{len(counts['shards']):>8}")
    return "\n".join(lines)
