"""Preprocessing throughput on the ImageNet path: a plain Python loop against the Beam pipeline's runners.

All rows use the same generated ILSVRC2012-style JPEG tree (ImageNet-like sizes, with a CMYK JPEG, a
PNG named .JPEG, a grayscale JPEG, a truncated JPEG and an empty file among them). The loop does the
pipeline's work (list, read, decode fully, check, convert when needed, build the Example, write
TFRecords) in one process. Every row runs in a fresh process with its modules already imported, and
reports wall time and the CPU seconds of the measuring process and of its child processes (forked
shard workers, Beam SDK harnesses, Dask workers): on a machine with C cores, a row can be at most
C * (loop CPU) / (its CPU) times faster than the loop, which is what bounds the ratios.
"""
from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import time
from typing import Dict, List

from revnet.common.errors import UserError

log = logging.getLogger(__name__)

SIZE_RANGE = (240, 420)  # ImageNet's typical image edges in pixels
NUM_CLASSES = 10
TRAIN_SHARDS = 16  # shards of ~125 images: the two workers finish within a shard of each other
RUNNERS = ("direct", "multi_processing", "dask")
MODES = {"direct": "in_memory", "multi_processing": "multi_processing", "dask": "LocalCluster"}


def _parse_counts(text: str, what: str) -> List[int]:
    try:
        counts = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} must be comma-separated integers like 1,2; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise UserError(f"--{what} needs at least one count, each >= 1; got {text!r}")
    return counts


def python_loop(input_dir: str, output_dir: str) -> Dict[str, int]:
    """Single-process baseline: list, decode, check, encode and write every image; returns counts."""
    from revnet.preprocess import images, tfrecord
    from revnet.preprocess.sources import imagenet

    listing = imagenet.list_imagenet(input_dir)
    counts = {"written": 0, "rejected": len(listing.rejects)}
    os.makedirs(output_dir, exist_ok=True)
    for split, split_items in listing.items.items():
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


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(spec: Dict) -> Dict:
    """Worker process: one row for spec {runner ("loop" or one of RUNNERS), workers, input, output}."""
    # Imported before the clock starts: imports are not what is measured.
    from revnet.pipeline import PreprocessConfig, beam_pipeline, run_preprocess  # noqa: F401
    from revnet.preprocess import images, tfrecord  # noqa: F401

    runner, workers = spec["runner"], spec["workers"]
    if runner == "dask":
        import apache_beam.runners.dask.dask_runner  # noqa: F401
    start_self, start_children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    if runner == "loop":
        counts = python_loop(spec["input"], spec["output"])
    else:
        beam_args = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"] \
            if runner == "multi_processing" else []
        metadata = run_preprocess(PreprocessConfig("imagenet", spec["output"], input_path=spec["input"],
                                                   train_shards=TRAIN_SHARDS, val_shards=1, workers=workers,
                                                   max_reject_fraction=1.0, beam_args=beam_args,
                                                   runner="dask" if runner == "dask" else "direct"))
        counts = {key: sum(s[key] for s in metadata["splits"].values()) for key in ("written", "rejected")}
    seconds = time.perf_counter() - started
    return {**counts, "seconds": seconds, "cpu_main": _cpu_seconds(resource.RUSAGE_SELF) - start_self,
            "cpu_children": _cpu_seconds(resource.RUSAGE_CHILDREN) - start_children}


def _row(runner: str, workers: int, images: int, tree: str, root: str, repeats: int) -> Dict:
    from revnet.benchmarks.worker import run_worker

    results = []
    for repeat in range(repeats):
        output = os.path.join(root, f"out-{runner}-{workers}-{repeat}")
        results.append(run_worker("revnet.benchmarks.preprocess", {"runner": runner, "workers": workers,
                                                                   "input": tree, "output": output},
                                  f"preprocess benchmark ({runner}, {workers} workers)"))
        shutil.rmtree(output, ignore_errors=True)
    median = sorted(results, key=lambda r: r["seconds"])[len(results) // 2]
    method = "python loop" if runner == "loop" else ("beam DaskRunner" if runner == "dask" else "beam DirectRunner")
    mode = "-" if runner == "loop" else MODES[runner] + (" + forked" if runner == "direct" and workers > 1 else "")
    return {"method": method, "mode": mode, "workers": workers, "images": images, "written": median["written"],
            "rejected": median["rejected"], "seconds": round(median["seconds"], 3),
            "seconds_spread": [round(r["seconds"], 3) for r in results],
            "cpu_main": round(median["cpu_main"], 2), "cpu_children": round(median["cpu_children"], 2)}


def run_preprocess_benchmark(num_images: int = 300, worker_counts="1,2", seed: int = 0, runners="direct,dask",
                             repeats: int = 1) -> List[Dict]:
    """Rows of {method, mode, workers, images, written, rejected, seconds, cpu_main, cpu_children,
    images_per_second, vs_loop}: the loop first, then each runner with each worker count."""
    counts = _parse_counts(worker_counts, "workers")
    chosen = [name.strip() for name in str(runners).split(",") if name.strip()]
    unknown = [name for name in chosen if name not in RUNNERS]
    if unknown or not chosen:
        raise UserError(f"--runners takes a comma-separated subset of {', '.join(RUNNERS)}; got {runners!r}")
    if num_images < NUM_CLASSES or repeats < 1:
        raise UserError(f"--images must be at least {NUM_CLASSES} and --repeats at least 1")
    from revnet.preprocess.fake_data import write_imagenet_tree

    root = tempfile.mkdtemp(prefix="revnet-bench-preprocess-")
    try:
        tree = os.path.join(root, "imagenet")
        per_class = max(1, (num_images - 5) // NUM_CLASSES)
        info = write_imagenet_tree(tree, NUM_CLASSES, train_per_class=max(1, per_class - 1), val_per_class=1,
                                   seed=seed, size_range=SIZE_RANGE)
        total = int(info["train_files"]) + int(info["val_files"])
        plan = [("loop", 1)] + [(runner, workers) for runner in chosen for workers in counts
                                if not (runner == "multi_processing" and workers == 1)]
        rows = []
        for runner, workers in plan:
            log.info("measuring %s with %d worker(s) on %d images", runner, workers, total)
            rows.append(_row(runner, workers, total, tree, root, repeats))
        for row in rows:
            row["images_per_second"] = round(row["images"] / row["seconds"], 1)
            row["vs_loop"] = round(rows[0]["seconds"] / row["seconds"], 3)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def format_rows(rows: List[Dict]) -> str:
    header = (f"{'method':<19}{'mode':<26}{'workers':>7}{'images':>7}{'written':>8}{'rejected':>9}{'seconds':>8}"
              f"{'images/s':>9}{'vs loop':>8}{'cpu main':>9}{'cpu children':>13}")
    lines = [header]
    for row in rows:
        lines.append(f"{row['method']:<19}{row['mode']:<26}{row['workers']:>7}{row['images']:>7}{row['written']:>8}"
                     f"{row['rejected']:>9}{row['seconds']:>8.2f}{row['images_per_second']:>9.1f}"
                     f"{row['vs_loop']:>7.2f}x{row['cpu_main']:>9.2f}{row['cpu_children']:>13.2f}")
    runs = len(rows[0]["seconds_spread"]) if rows else 1
    lines.append(f"(CPU seconds of the measuring process and of its child processes; "
                 f"{'median of ' + str(runs) + ' runs' if runs > 1 else 'one run'} per row)")
    return "\n".join(lines)


if __name__ == "__main__":
    from revnet.benchmarks.worker import worker_main

    worker_main(measure, "preprocess")
