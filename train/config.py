"""`TrainConfig`: every training option in one frozen dataclass, with the paper's recipes as its defaults.

This is the only place training defaults live. `cli.py train` builds one flag per field from the field's
metadata, `revnet.train.trainer.run(**overrides)` takes the same names, and the resolved config is saved as the "train"
part of WORKDIR/ID/config.json. The recipes were checked against the paper and the original code's
`resnet/configs/cifar_configs.py` and `imagenet_configs.py` (renmengye/revnet-public): momentum SGD, base
learning rate 0.1 divided by 10 at each boundary, L2 weight decay on conv and dense kernels. When `steps`
changes the length of a run, the decay boundaries keep their paper fractions of it (40k/80k and 60k/80k
for CIFAR), so a short run still decays its learning rate.

Importing this module does not import TensorFlow (the CLI builds its flags from it).
"""
from __future__ import annotations

import dataclasses
import secrets
from typing import Dict, Optional, Tuple

from revnet.common.errors import UserError, choose
from revnet.models.modes import MODES

DEFAULT_WORKDIR = "./experiments"
AUGMENTATIONS = ("cifar", "imagenet")
MIXED_PRECISION = {None: None, "bf16": "bfloat16", "fp16": "float16"}


def _option(help_text: str, flag: Optional[str] = None, choices=None):
    """Field metadata from which `cli.py train` makes its flag (`--field-name` unless `flag` is given)."""
    return {"help": help_text, "flag": flag, "choices": choices}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int = dataclasses.field(metadata=_option("Global batch size, split across replicas."))
    learning_rate: float = dataclasses.field(metadata=_option("Base learning rate.", flag="--lr"))
    momentum: float = dataclasses.field(metadata=_option("Momentum of momentum SGD."))
    weight_decay: float = dataclasses.field(metadata=_option("L2 weight decay on conv and dense kernels."))
    steps: int = dataclasses.field(metadata=_option("Total training steps (the decay boundaries scale with it)."))
    decay_boundaries: Tuple[float, ...]   # fractions of `steps` at which the rate is multiplied by decay_factor
    decay_factor: float
    augmentation: str                     # "cifar" (pad 4, crop, flip) | "imagenet" (random-resized crop, flip)
    eval_batch_size: int = dataclasses.field(metadata=_option("Batch size of in-training evaluation."))
    checkpoint_every: int = dataclasses.field(metadata=_option("Save a checkpoint every N steps (and at the end)."))
    log_every: int = dataclasses.field(metadata=_option("Log and write summaries every N steps."))
    eval_every: int = dataclasses.field(
        default=0, metadata=_option("Evaluate on the validation split every N steps (0 = never)."))
    seed: Optional[int] = dataclasses.field(
        default=None, metadata=_option("Seed for weights, data order and augmentation [default: random, saved]."))
    mixed_precision: Optional[str] = dataclasses.field(
        default=None, metadata=_option("Compute in bfloat16 or float16 (with dynamic loss scaling) "
                                       "[default: float32].", choices=("bf16", "fp16")))
    mode: str = dataclasses.field(
        default="reversible", metadata=_option("RevNet backward pass: reversible recomputation or plain autodiff.",
                                               choices=MODES))
    bn_momentum: Optional[float] = dataclasses.field(
        default=None, metadata=_option("Batch-norm moving-average momentum; lower (e.g. 0.9) suits runs of a few "
                                       "hundred steps [default: the model's, 0.99]."))
    keep_checkpoints: int = dataclasses.field(
        default=5, metadata=_option("How many recent checkpoints to keep."))
    steps_per_call: int = dataclasses.field(
        default=1, metadata=_option("Training steps per compiled call (Keras' steps_per_execution); calls end at "
                                    "every log, checkpoint and evaluation step, so those land where their flags "
                                    "say; SIGTERM saves after the call in flight [default: 1]."))
    jit: bool = dataclasses.field(
        default=False, metadata=_option("Compile each replica's forward and backward pass with XLA "
                                        "(jit_compile=True); on CPU it is slower (see the README) [default: off]."))

    def __post_init__(self):
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "eval_batch_size", "keep_checkpoints",
                     "steps_per_call"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"{_flag(name)} must be an integer of at least 1, got {getattr(self, name)!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise UserError(f"--eval-every must be an integer of at least 0, got {self.eval_every!r}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError("--lr must be > 0, --weight-decay >= 0 and --momentum in [0, 1)")
        if self.bn_momentum is not None and not 0.0 <= self.bn_momentum < 1.0:
            raise UserError(f"--bn-momentum must be in [0, 1), got {self.bn_momentum}")
        if not isinstance(self.jit, bool):
            raise UserError(f"--jit must be true or false, got {self.jit!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise UserError(f"--seed must be an integer, got {self.seed!r}")
        choose("--mixed-precision", self.mixed_precision, list(MIXED_PRECISION))
        choose("--mode", self.mode, MODES)
        choose("augmentation", self.augmentation, AUGMENTATIONS)
        if not all(0.0 <= fraction <= 1.0 for fraction in self.decay_boundaries) or not 0 < self.decay_factor <= 1:
            raise UserError("decay boundaries must be fractions of the run and the decay factor in (0, 1]")

    @property
    def lr_boundaries(self) -> Tuple[int, ...]:
        """The steps at which the learning rate decays, for this run's length."""
        return tuple(int(round(fraction * self.steps)) for fraction in self.decay_boundaries)

    @property
    def compute_dtype(self) -> Optional[str]:
        return MIXED_PRECISION[self.mixed_precision]

    def replace(self, **overrides) -> "TrainConfig":
        """A copy with the non-None `overrides` applied (validated); unknown names are a UserError."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; expected some of: "
                            f"{', '.join(field_names())}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def with_seed(self) -> "TrainConfig":
        """This config with a random seed drawn if none was chosen (the drawn seed is saved with it)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbelow(2 ** 31))

    def to_json(self) -> Dict:
        return dict(dataclasses.asdict(self), decay_boundaries=list(self.decay_boundaries))

    @classmethod
    def from_json(cls, fields: Dict, base: Optional["TrainConfig"] = None) -> "TrainConfig":
        """From a saved config.json "train" part (older files also hold derived keys, which are ignored;
        fields they lack, e.g. options added since, come from `base`)."""
        names = {field.name for field in dataclasses.fields(cls)}
        known = {name: value for name, value in fields.items() if name in names}
        if "decay_boundaries" in known:
            known["decay_boundaries"] = tuple(known["decay_boundaries"])
        return dataclasses.replace(base, **known) if base is not None else cls(**known)


def field_names() -> Tuple[str, ...]:
    """The options a user may override (the fields with a flag)."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata)


def _flag(name: str) -> str:
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return (field.metadata or {}).get("flag") or "--" + name.replace("_", "-")


def flag_specs():
    """(field name, flag, type, choices, help) for each overridable field: what `cli.py train` offers."""
    hints = {"batch_size": int, "learning_rate": float, "momentum": float, "weight_decay": float, "steps": int,
             "eval_batch_size": int, "checkpoint_every": int, "log_every": int, "eval_every": int, "seed": int,
             "mixed_precision": str, "mode": str, "bn_momentum": float, "keep_checkpoints": int,
             "steps_per_call": int, "jit": bool}
    return [(f.name, _flag(f.name), hints[f.name], f.metadata.get("choices"), f.metadata["help"])
            for f in dataclasses.fields(TrainConfig) if f.metadata]


RECIPES: Dict[str, TrainConfig] = {
    # batch 100, lr 0.1 -> 0.01 at 40k -> 0.001 at 60k, 80k steps, wd 2e-4, momentum 0.9.
    "cifar": TrainConfig(batch_size=100, learning_rate=0.1, momentum=0.9, weight_decay=2e-4, steps=80_000,
                         decay_boundaries=(40_000 / 80_000, 60_000 / 80_000), decay_factor=0.1,
                         augmentation="cifar", eval_batch_size=100, checkpoint_every=10_000, log_every=100),
    # batch 256 (4 GPUs x 64), lr 0.1 divided by 10 at 160k, 320k, 480k; 600k steps, wd 1e-4.
    "imagenet": TrainConfig(batch_size=256, learning_rate=0.1, momentum=0.9, weight_decay=1e-4, steps=600_000,
                            decay_boundaries=(160_000 / 600_000, 320_000 / 600_000, 480_000 / 600_000),
                            decay_factor=0.1, augmentation="imagenet", eval_batch_size=64,
                            checkpoint_every=5_000, log_every=10),
}


def recipe_for(family: str) -> TrainConfig:
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
