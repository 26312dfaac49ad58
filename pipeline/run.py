"""The preprocessing driver: check the inputs, plan the shards, run the Beam graph, publish atomically.

Everything that can be wrong with the input (missing or wrong archive, hostile or misshapen pickles,
unknown validation synsets, a folder in the way) is found here, before the pipeline starts, and raised
as a one-line UserError. The output is built in a temporary sibling folder and renamed into place only
after the counts reconcile; metadata.json ("complete": true) is its last file. `--overwrite` replaces
only a folder holding a dataset written here (nothing else in it) or an empty one.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List, Optional

import numpy as np

from revnet.common import storage
from revnet.common.errors import UserError
from revnet.pipeline import plan as planning
from revnet.pipeline import rejects as limits
from revnet.pipeline import runners, shards
from revnet.pipeline.preprocess_config import PreprocessConfig
from revnet.pipeline.plan import Plan
from revnet.preprocess.tfrecord import METADATA_FILE, REJECTS_FILE, shard_name

log = logging.getLogger(__name__)


def default_workers() -> int:
    """All cores: forked shard workers were the fastest local setting measured (`benchmark preprocess`)."""
    return os.cpu_count() or 1


def _dataset_files(output_dir: str) -> Optional[List[str]]:
    """The files a dataset written by preprocess consists of, from its metadata.json; None if unreadable."""
    try:
        metadata = json.loads(storage.read_text(storage.join(output_dir, METADATA_FILE)))
        return [METADATA_FILE, REJECTS_FILE] + [shard["file"] for split in metadata["splits"].values()
                                                for shard in split["shards"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_output(output_dir: str, overwrite: bool) -> None:
    """Refuse an output folder unless it is new, empty, or (with overwrite) exactly a dataset of ours."""
    if not storage.is_remote(output_dir) and os.path.isfile(output_dir):
        raise UserError(f"--output {output_dir!r} is a file; expected a folder path")
    names = storage.list_names(output_dir)
    if not names:
        return
    if METADATA_FILE not in names:
        raise UserError(f"--output {output_dir!r} is not empty and holds no dataset written by preprocess (no "
                        f"{METADATA_FILE}); choose a new or empty folder (--overwrite replaces only a dataset)")
    if not overwrite:
        raise UserError(f"{output_dir!r} already holds a finished dataset; pass --overwrite to replace it")
    ours = _dataset_files(output_dir)
    if ours is None:
        raise UserError(f"{storage.join(output_dir, METADATA_FILE)} is not the metadata of a dataset written by "
                        f"preprocess; nothing was replaced")
    foreign = [name for name in names if name not in ours]
    if foreign:
        raise UserError(f"{output_dir!r} holds a dataset but also {foreign[0]!r}, which preprocess did not write; "
                        f"--overwrite would delete it, so nothing was replaced (move it elsewhere first)")


def run_preprocess(config: PreprocessConfig) -> Dict:
    """Turn a raw dataset into sharded TFRecords + metadata.json in `config.output_dir`; returns the metadata."""
    source = planning.SOURCES[config.dataset]
    output_dir = config.output_dir
    if not storage.is_remote(output_dir):
        output_dir = os.path.abspath(output_dir)
    # What the user can get wrong is checked first, before Beam, Dask or a long listing starts.
    source.check(config)
    check_output(output_dir, config.overwrite)
    choice = runners.choose_runner(config.beam_args, config.runner, config.dask_address)

    plan = source.plan(config)
    num_shards = planning.shard_counts(plan, config.train_shards, config.val_shards)
    config = config.replace(train_shards=num_shards["train"], val_shards=num_shards["validation"],
                            workers=config.workers or default_workers())
    read = plan.read_counts()
    log.info("%s: %s inputs from %s", config.dataset, ", ".join(f"{count} {split}" for split, count in read.items()),
             plan.input_path or config.manifest)

    if not storage.is_remote(output_dir):
        os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    work_dir = storage.temp_sibling(output_dir, "tmp")
    try:
        metadata = _run_in(work_dir, config, plan, num_shards, read, choice, output_dir)
        check_output(output_dir, config.overwrite)  # again: something may have appeared there while we ran
        storage.publish_folder(work_dir, output_dir, METADATA_FILE)
    except BaseException:
        storage.remove_tree(work_dir)
        raise
    limits.remove_kept_list(output_dir)
    log.info("wrote %s", output_dir)
    return metadata


def _execute(work_dir: str, task_names: List[str], total_images: int, choice, workers: int) -> runners.Execution:
    import apache_beam as beam

    from revnet.pipeline import beam_pipeline
    from revnet.pipeline.shard_progress import ShardProgress

    with runners.execution(choice, workers, len(task_names)) as execution:
        pipeline = beam.Pipeline(runner=execution.runner, options=execution.options)
        beam_pipeline.build(pipeline, work_dir, task_names, execution.local_processes,
                            distribute=not execution.in_process)
        log.info("running on %s", execution.description)
        with ShardProgress(work_dir, len(task_names), total_images):
            runners.run_to_completion(pipeline, choice)
    return execution


def _collect(work_dir: str, task_names: List[str]) -> Dict[str, dict]:
    finished = set(shards.finished_tasks(work_dir))
    missing = [name for name in task_names if name not in finished]
    if missing:
        raise RuntimeError(f"the runner finished without writing {len(missing)} of {len(task_names)} shards (e.g. "
                           f"{missing[0]}); records were lost, the output is not published")
    return {name: shards.read_summary(work_dir, name) for name in task_names}


def _pixel_mean(summaries: List[dict], written: int) -> Optional[list]:
    """Mean raw pixel value [H][W][3] over the written records, from the shards' exact integer sums; None
    for datasets of JPEGs of any size (ImageNet-style models use no mean) or without training records."""
    sums = [s["pixel_sum"] for s in summaries if s["pixel_sum"] is not None]
    if not sums or not written:
        return None
    total = np.sum(np.asarray(sums, dtype=np.int64), axis=0)
    return (total.astype(np.float64) / written).tolist()


def _split_counts(split: str, mine: List[dict], read: int, rejected: int, skipped: int, num_labels: int,
                  label_offset: int) -> Dict:
    """One split's entry of metadata.json, after checking that every input read is accounted for."""
    written = sum(s["records"] for s in mine)
    if written + rejected + skipped != read:
        raise RuntimeError(f"{split}: read {read} inputs but wrote {written}, rejected {rejected} and skipped "
                           f"{skipped}; records were lost, the output is not published")
    converted: Dict[str, int] = {}
    per_class = [0] * num_labels
    for summary in mine:
        for action, count in summary["converted"].items():
            converted[action] = converted.get(action, 0) + count
        for label, count in summary["labels"].items():
            per_class[int(label) - label_offset] += count
    return {"read": read, "written": written, "rejected": rejected, "skipped": skipped, "converted": converted,
            "class_counts": per_class, "shards": [{"file": s["file"], "records": s["records"]} for s in mine]}


def _duplicates(summaries: List[dict]) -> Dict:
    """Inputs with the same bytes in two splits (an evaluation that measures memory), named."""
    seen: Dict[str, tuple] = {}
    pairs = []
    for summary in summaries:
        for digest, path in summary["digests"]:
            first = seen.setdefault(digest, (summary["split"], path))
            if first[0] != summary["split"]:
                pairs.append(sorted([first[1], path]))
    pairs.sort()
    if pairs:
        log.warning("%d image(s) appear in two splits with the same content, e.g. %s and %s; an evaluation on "
                    "them measures memory, not generalisation (all are listed in metadata.json \"duplicates\")",
                    len(pairs), *pairs[0])
    return {"count": len(pairs), "pairs": pairs}


def _skipped(skips: List[dict]) -> Dict:
    """Skipped inputs by reason: how many, and a few of their paths."""
    by_reason: Dict[str, Dict] = {}
    for skip in sorted(skips, key=lambda s: s["path"]):
        entry = by_reason.setdefault(skip["reason"], {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < 5:
            entry["examples"].append(skip["path"])
    return by_reason


def _run_in(work_dir: str, config: PreprocessConfig, plan: Plan, num_shards: Dict[str, int], read, choice,
            output_dir: str) -> Dict:
    shard_files = {split: [shard_name(split, i, count) for i in range(count)] for split, count in num_shards.items()}
    task_names = planning.write_tasks(work_dir, plan, config.seed, shard_files)
    started = time.monotonic()
    execution = _execute(work_dir, task_names, sum(len(items) for items in plan.items.values()), choice,
                         config.workers)
    seconds = time.monotonic() - started
    summaries = _collect(work_dir, task_names)
    rejects = list(plan.rejects) + [r for s in summaries.values() for r in s["rejects"]]
    splits = {split: _split_counts(split, [summaries[name] for name in task_names if summaries[name]["split"] == split],
                                   read[split], sum(1 for r in rejects if r["split"] == split),
                                   sum(1 for r in plan.skips if r["split"] == split), len(plan.label_names),
                                   config.label_offset) for split in plan.splits}
    limits.check_limits(read, {split: counts["rejected"] for split, counts in splits.items()}, rejects, config,
                        output_dir)
    storage.write_bytes(storage.join(work_dir, REJECTS_FILE), limits.rejects_jsonl(rejects))
    empty = [name for name, count in zip(plan.label_names, splits["train"]["class_counts"], strict=True) if not count]
    if empty:
        log.warning("class(es) %s have no training records (see %s)", ", ".join(map(repr, empty)), REJECTS_FILE)
    # Only the dataset is published: scratch folders and any temporary file a killed worker left go.
    expected = {REJECTS_FILE} | {name for files in shard_files.values() for name in files}
    for name in storage.list_names(work_dir):
        if name not in expected:
            if name in (shards.TASKS_DIR, shards.DONE_DIR):
                storage.remove_tree(storage.join(work_dir, name))
            else:
                storage.remove(storage.join(work_dir, name))
    train = [summaries[name] for name in task_names if summaries[name]["split"] == "train"]
    metadata = {
        "dataset": config.dataset, "num_classes": len(plan.label_names), "label_names": plan.label_names,
        "synsets": plan.synsets, "label_offset": config.label_offset,
        "label": config.label if config.dataset == "cifar-100" else None,
        "splits": splits, "complete": True, "seconds": round(seconds, 2),
        "pixel_mean": _pixel_mean(train, splits["train"]["written"]),
        "options": dict(config.to_json(), input_path=plan.input_path, output_dir=output_dir),
        "execution": {"runner": execution.description, "beam_args": list(execution.args)},
        **plan.extra,
    }
    if plan.digests:
        metadata["duplicates"] = _duplicates(list(summaries.values()))
        metadata["skipped"] = _skipped(plan.skips)
    # Last file of the folder: its presence with "complete": true is what marks a finished dataset.
    storage.write_bytes(storage.join(work_dir, METADATA_FILE),
                        (json.dumps(metadata, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return metadata


def format_summary(metadata: Dict, output_dir: str) -> str:
    """A short table of the per-split counts for the terminal."""
    lines = [f"{metadata['dataset']} -> {os.path.abspath(output_dir)} ({metadata['num_classes']} classes, "
             f"{metadata['seconds']:.1f} s)",
             f"{'split':<12}{'read':>10}{'written':>10}{'rejected':>10}{'skipped':>10}{'shards':>8}"]
    for split, counts in metadata["splits"].items():
        lines.append(f"{split:<12}{counts['read']:>10}{counts['written']:>10}{counts['rejected']:>10}"
                     f"{counts.get('skipped', 0):>10}{len(counts['shards']):>8}")
    return "\n".join(lines)
