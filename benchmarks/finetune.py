"""Fine-tuning onto new classes: from scratch against `--init-from` against `--init-from --freeze all-but-head`.

One run, one machine, equal steps. There are no downloadable pretrained weights here, so the benchmark makes
its own source task: a folder of generated images of eight shapes (random colours, sizes, positions and
backgrounds), preprocessed, and a network trained on it. The target task is a small folder of four other
shapes (a few dozen training images per class, the setting fine-tuning is for). Every dataset goes through
`preprocess folder`, every network through the trainer and the evaluator, with the options a user passes
(`train --init-from SOURCE [--freeze all-but-head]`, the fine-tuning defaults of the recipe otherwise).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

log = logging.getLogger(__name__)

SOURCE_SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar", "diamond", "dot-pair")
TARGET_SHAPES = ("pentagon", "star", "x-mark", "half-disc")


def _polygon(center, radius, sides, rotation, inner=None):
    points = []
    for k in range(sides * (2 if inner else 1)):
        angle = rotation + math.pi * k / (sides if inner else sides / 2)
        r = inner * radius if inner and k % 2 else radius
        points.append((center[0] + r * math.cos(angle), center[1] + r * math.sin(angle)))
    return points


def draw_shape(shape: str, rng: np.random.Generator, size: int = 64):
    """One RGB image of `shape`, light and slightly tinted, on a dark noisy background: the shape is the signal."""
    from PIL import Image, ImageDraw

    background = rng.integers(10, 70) + rng.integers(0, 20, 3)
    pixels = np.clip(background + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(170, 230) + rng.integers(0, 26, 3))
    radius = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    rotation = rng.uniform(0, 2 * math.pi)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    width = max(2, int(radius / 3))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif shape == "square":
        draw.polygon(_polygon((cx, cy), radius, 4, rotation), fill=colour)
    elif shape == "diamond":
        draw.polygon(_polygon((cx, cy), radius, 4, rotation, inner=0.45), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon((cx, cy), radius, 3, rotation), fill=colour)
    elif shape == "pentagon":
        draw.polygon(_polygon((cx, cy), radius, 5, rotation), fill=colour)
    elif shape == "star":
        draw.polygon(_polygon((cx, cy), radius, 5, rotation, inner=0.4), fill=colour)
    elif shape in ("cross", "x-mark"):
        turn = 0.0 if shape == "cross" else math.pi / 4
        for angle in (turn, turn + math.pi / 2):
            dx, dy = radius * math.cos(angle), radius * math.sin(angle)
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=width)
    elif shape == "bar":
        dx, dy = radius * math.cos(rotation), radius * math.sin(rotation)
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=width * 2)
    elif shape == "half-disc":
        degrees = math.degrees(rotation)
        draw.pieslice(box, degrees, degrees + 180, fill=colour)
    elif shape == "dot-pair":
        small = radius / 3
        for sign in (-1, 1):
            x, y = cx + sign * radius * 0.6 * math.cos(rotation), cy + sign * radius * 0.6 * math.sin(rotation)
            draw.ellipse((x - small, y - small, x + small, y + small), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image


def write_shape_folder(root: str, shapes, per_class: Dict[str, int], seed: int) -> None:
    """ROOT/<split>/<shape>/<n>.png with per_class[split] images of each shape."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for shape in shapes:
            folder = os.path.join(root, split, shape)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                draw_shape(shape, rng).save(os.path.join(folder, f"{index:04d}.png"))


def _preprocess(input_dir: str, output_dir: str) -> None:
    from revnet.pipeline import run_preprocess
    from revnet.pipeline.preprocess_config import PreprocessConfig

    run_preprocess(PreprocessConfig(dataset="folder", input_path=input_dir, output_dir=output_dir, image_size=32,
                                    workers=1))


def run_finetune_benchmark(model: str = "revnet-38", pretrain_steps: int = 300, steps: int = 100,
                           batch_size: int = 32, source_per_class: int = 150, target_per_class: int = 30,
                           val_per_class: int = 50, seed: int = 0, workdir: Optional[str] = None) -> Dict:
    """Pretrain on the source shapes, then train the target shapes three ways; returns the report."""
    from revnet.train.evaluator import evaluate
    from revnet.train.trainer import run as train

    with tempfile.TemporaryDirectory(prefix="revnet-finetune-") as scratch:
        workdir = workdir or os.path.join(scratch, "experiments")
        folders = {name: os.path.join(scratch, name) for name in ("source", "target")}
        write_shape_folder(folders["source"] + "-images", SOURCE_SHAPES,
                           {"train": source_per_class, "val": max(10, source_per_class // 5)}, seed)
        write_shape_folder(folders["target"] + "-images", TARGET_SHAPES,
                           {"train": target_per_class, "val": val_per_class}, seed + 1)
        for folder in folders.values():
            _preprocess(folder + "-images", folder)
        common = dict(model=model, workdir=workdir, batch_size=batch_size, seed=seed, progress=False)
        started = time.monotonic()
        train(data=folders["source"], id="source", steps=pretrain_steps, **common)
        source_top1 = evaluate(id="source", workdir=workdir, once=True)["top1"]
        log.info("source task: top-1 %.3f after %d steps (%.0f s)", source_top1, pretrain_steps,
                 time.monotonic() - started)
        rows: List[Dict] = []
        for name, options in (("from scratch", {}), ("fine-tuned", {"init_from": "source"}),
                              ("fine-tuned, all but the head frozen", {"init_from": "source",
                                                                       "freeze": "all-but-head"})):
            exp_id = name.split(",")[0].replace(" ", "-") + ("-frozen" if "freeze" in options else "")
            started = time.monotonic()
            train(data=folders["target"], id=exp_id, steps=steps, **options, **common)
            seconds = time.monotonic() - started
            record = evaluate(id=exp_id, workdir=workdir, once=True)
            rows.append({"run": name, "options": " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items()),
                         "top1": record["top1"], "loss": record["loss"], "examples": record["examples"],
                         "train_seconds": round(seconds, 1)})
            log.info("%s: top-1 %.3f (%.0f s)", name, record["top1"], seconds)
    return {"model": model, "pretrain_steps": pretrain_steps, "steps": steps, "batch_size": batch_size,
            "source_classes": len(SOURCE_SHAPES), "source_train_images": source_per_class * len(SOURCE_SHAPES),
            "source_top1": source_top1, "target_classes": len(TARGET_SHAPES),
            "target_train_images": target_per_class * len(TARGET_SHAPES),
            "target_val_images": val_per_class * len(TARGET_SHAPES), "rows": rows}


def format_report(report: Dict) -> str:
    lines = [f"{report['model']}: source task {report['source_classes']} shapes, "
             f"{report['source_train_images']} training images, {report['pretrain_steps']} steps, top-1 "
             f"{report['source_top1']:.3f}; target task {report['target_classes']} other shapes, "
             f"{report['target_train_images']} training and {report['target_val_images']} validation images, "
             f"{report['steps']} steps of batch {report['batch_size']} per row", "",
             f"{'run':<38} {'top-1':>6} {'loss':>7} {'train s':>8}  options"]
    for row in report["rows"]:
        lines.append(f"{row['run']:<38} {row['top1']:>6.3f} {row['loss']:>7.3f} {row['train_seconds']:>8.1f}  "
                     f"{row['options'] or '(none)'}")
    return "\n".join(lines)
