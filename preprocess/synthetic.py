"""Procedurally generated, learnable 32x32 RGB images for the offline demo and tests.

Ten classes: five stripe/texture patterns times two colour palettes. Every image has a random phase,
frequency, orientation jitter, brightness and pixel noise, so a network has to learn the pattern
rather than memorise pixels, yet a small RevNet separates the classes in a few hundred steps.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

PATTERNS = ("horizontal", "vertical", "diagonal", "checker", "rings")
PALETTES = {"warm": ((230, 90, 40), (250, 200, 60)), "cool": ((40, 90, 230), (60, 200, 200))}
LABEL_NAMES: List[str] = [f"{palette}-{pattern}" for palette in PALETTES for pattern in PATTERNS]


def _pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A [size, size] field in 0..1 for one pattern kind, randomly jittered."""
    coords = np.arange(size, dtype=np.float32)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    frequency = rng.uniform(0.35, 0.6)
    phase = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(-0.15, 0.15)
    if kind == "horizontal":
        field = np.sin(frequency * (yy + tilt * xx) + phase)
    elif kind == "vertical":
        field = np.sin(frequency * (xx + tilt * yy) + phase)
    elif kind == "diagonal":
        field = np.sin(frequency * (xx + yy) / np.sqrt(2) + phase)
    elif kind == "checker":
        field = np.sin(frequency * xx + phase) * np.sin(frequency * yy + rng.uniform(0, 2 * np.pi))
    else:
        cy, cx = rng.uniform(8, size - 8, size=2)
        field = np.sin(frequency * np.hypot(yy - cy, xx - cx) + phase)
    return (field + 1.0) / 2.0


def make_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    palette = list(PALETTES.values())[label // len(PATTERNS)]
    field = _pattern(PATTERNS[label % len(PATTERNS)], size, rng)[..., None]
    low, high = (np.asarray(c, np.float32) for c in palette)
    image = low + field * (high - low)
    image = image * rng.uniform(0.7, 1.1) + rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(num_examples: int, seed: int, size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, size, size, 3], labels int64 [N]) with balanced classes in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_examples) % len(LABEL_NAMES)
    rng.shuffle(labels)
    images = np.stack([make_image(int(label), rng, size) for label in labels]) if num_examples else \
        np.zeros((0, size, size, 3), np.uint8)
    return images, labels.astype(np.int64)
