"""The paper's training recipes, one per dataset family: the only place training defaults live.

Checked against PAPER.md and the original code's `resnet/configs/cifar_configs.py` and
`imagenet_configs.py` (renmengye/revnet-public): momentum SGD, base learning rate 0.1 divided by
10 at each boundary, L2 weight decay on conv and dense kernels. Every `cli.py train` flag overrides
one field. When `--steps` changes the length of a run, the decay boundaries keep their paper
fractions of it (40k/80k and 60k/80k for CIFAR), so a short run still decays its learning rate.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from revnet.common.errors import choose


@dataclasses.dataclass(frozen=True)
class Recipe:
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    steps: int
    decay_boundaries: Tuple[float, ...]   # fractions of `steps` at which the rate is divided by 10
    decay_factor: float
    augmentation: str                     # "cifar" (pad 4, crop, flip) | "imagenet" (random-resized crop, flip)
    eval_batch_size: int
    checkpoint_every: int
    log_every: int

    def boundaries_for(self, steps: int) -> Tuple[int, ...]:
        return tuple(int(round(fraction * steps)) for fraction in self.decay_boundaries)

    def to_json(self) -> Dict:
        return dataclasses.asdict(self)


RECIPES: Dict[str, Recipe] = {
    # batch 100, lr 0.1 -> 0.01 at 40k -> 0.001 at 60k, 80k steps, wd 2e-4, momentum 0.9.
    "cifar": Recipe(batch_size=100, learning_rate=0.1, momentum=0.9, weight_decay=2e-4, steps=80_000,
                    decay_boundaries=(40_000 / 80_000, 60_000 / 80_000), decay_factor=0.1,
                    augmentation="cifar", eval_batch_size=100, checkpoint_every=10_000, log_every=100),
    # batch 256 (4 GPUs x 64), lr 0.1 divided by 10 at 160k, 320k, 480k, 600k steps, wd 1e-4.
    "imagenet": Recipe(batch_size=256, learning_rate=0.1, momentum=0.9, weight_decay=1e-4, steps=600_000,
                       decay_boundaries=(160_000 / 600_000, 320_000 / 600_000, 480_000 / 600_000),
                       decay_factor=0.1, augmentation="imagenet", eval_batch_size=64,
                       checkpoint_every=5_000, log_every=10),
}


def recipe_for(family: str) -> Recipe:
    return RECIPES[choose("dataset family", family, RECIPES)]


def learning_rate_at(step, base_rate: float, boundaries: Tuple[int, ...], decay_factor: float):
    """Piecewise-constant rate: `base_rate * decay_factor ** (number of boundaries passed)`.

    Works on Python ints and on int64 tensors (inside the compiled train step).
    """
    import tensorflow as tf

    step = tf.convert_to_tensor(step, tf.int64)
    passed = tf.zeros([], tf.float32)
    for boundary in boundaries:
        passed += tf.cast(step >= boundary, tf.float32)
    return tf.constant(base_rate, tf.float32) * tf.pow(tf.constant(decay_factor, tf.float32), passed)
