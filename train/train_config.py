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
from revnet.common.options import flag_of, given, option, option_fields
from revnet.models.registry import ModelConfig, model_config_from_json

DEFAULT_WORKDIR = "./experiments"
AUGMENTATIONS = ("cifar", "imagenet")
SCHEDULES = ("step", "cosine")
# What --init-from changes in the recipe unless a flag says otherwise: a tenth of the learning rate,
# a cosine schedule and a short warm-up (5% of the run), the usual fine-tuning schedule.
FINE_TUNING = {"learning_rate_factor": 0.1, "schedule": "cosine", "warmup_fraction": 0.05}
_FILLED_IN = "[default: the paper recipe; on resume, the saved config]"


def _flag(help_text: str, **kwargs):
    """A train flag: it defaults to None, so the recipe (new run) or the saved config (resume) fills it."""
    help_text += "" if "[default" in help_text else " " + _FILLED_IN
    return option(help_text, click_default=None, show_default=False, **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the network itself, its mode and precision, is the ModelConfig's)."""

    batch_size: int = dataclasses.field(metadata=_flag("Global batch size, split across replicas.", min=1))
    learning_rate: float = dataclasses.field(metadata=_flag("Base learning rate.", flag="--lr"))
    momentum: float = dataclasses.field(metadata=_flag("Momentum of momentum SGD."))
    weight_decay: float = dataclasses.field(metadata=_flag("L2 weight decay on conv and dense kernels."))
    steps: int = dataclasses.field(metadata=_flag("Total training steps (the decay boundaries scale with it).",
                                                  min=1))
    decay_boundaries: Tuple[float, ...]   # fractions of `steps` at which the rate is multiplied by decay_factor
    decay_factor: float
    augmentation: str                     # "cifar" (pad 4, crop, flip) | "imagenet" (random-resized crop, flip)
    eval_batch_size: int = dataclasses.field(metadata=_flag("Batch size of in-training evaluation.", min=1))
    checkpoint_every: int = dataclasses.field(metadata=_flag("Save a checkpoint every N steps (and at the end).",
                                                             min=1))
    log_every: int = dataclasses.field(metadata=_flag("Log and write summaries every N steps.", min=1))
    eval_every: int = dataclasses.field(
        default=0, metadata=_flag("Evaluate on the validation split every N steps (0 = never).", min=0))
    seed: Optional[int] = dataclasses.field(
        default=None, metadata=_flag("Seed of the data order and augmentation, and of a new experiment's "
                                     "initial weights [default: random, saved]."))
    keep_checkpoints: int = dataclasses.field(default=5, metadata=_flag("How many recent checkpoints to keep.",
                                                                        min=1))
    steps_per_call: int = dataclasses.field(
        default=1, metadata=_flag("Training steps per compiled call (Keras' steps_per_execution); calls end at "
                                  "every log, checkpoint and evaluation step, so those land where their flags "
                                  "say; SIGTERM saves after the call in flight [default: 1].", min=1))
    jit: bool = dataclasses.field(
        default=False, metadata=_flag("Compile each replica's forward and backward pass with XLA "
                                      "(jit_compile=True) [default: off].", negatable=True))
    schedule: str = dataclasses.field(
        default="step", metadata=_flag("Learning-rate schedule: 'step' (the paper's: divided by 10 at its fractions "
                                       "of --steps) or 'cosine' (to zero at the last step) [default: step; with "
                                       "--init-from, cosine].", choices=SCHEDULES))
    warmup_steps: int = dataclasses.field(
        default=0, metadata=_flag("Steps of linear warm-up from 0 to --lr before the schedule [default: 0; with "
                                  "--init-from, 5% of --steps].", min=0))
    label_smoothing: float = dataclasses.field(
        default=0.0, metadata=_flag("Label smoothing of the cross-entropy loss (0 = none, e.g. 0.1) [default: 0].",
                                    min=0.0, max=0.5))
    init_from: Optional[str] = dataclasses.field(
        default=None, metadata=_flag("Start a new experiment from these weights: an experiment id, a checkpoint or "
                                     "experiment folder of ours, or an original-code checkpoint (prefix, folder or "
                                     ".tar.gz). What fits by name and shape is loaded; the classifier is "
                                     "re-initialised when the class count differs [default: random weights]."))
    init_skip_mismatched: bool = dataclasses.field(
        default=False, metadata=_flag("With --init-from: keep the initial values of weights outside the classifier "
                                      "whose shapes differ, instead of stopping [default: stop].", negatable=True))
    freeze: Optional[str] = dataclasses.field(
        default=None, metadata=_flag("Parts to keep fixed while fine-tuning, comma-separated: stem, stage1..stageN, "
                                     "head, or all-but-head (train only the classifier). Frozen parts keep their "
                                     "weights and run with their batch-norm moving statistics, never updated "
                                     "[default: train everything; fixed for an experiment once it starts]."))


    def __post_init__(self):
        for name in ("batch_size", "steps", "checkpoint_every", "log_every", "eval_batch_size", "keep_checkpoints",
                     "steps_per_call"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"{flag_of(TrainConfig, name)} must be an integer of at least 1, got "
                                f"{getattr(self, name)!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise UserError(f"--eval-every must be an integer of at least 0, got {self.eval_every!r}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UserError("--lr must be > 0, --weight-decay >= 0 and --momentum in [0, 1)")
        if not isinstance(self.jit, bool):
            raise UserError(f"--jit must be true or false, got {self.jit!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise UserError(f"--seed must be an integer, got {self.seed!r}")
        choose("augmentation", self.augmentation, AUGMENTATIONS)
        choose("--schedule", self.schedule, SCHEDULES)
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.steps:
            raise UserError(f"--warmup-steps must be an integer in [0, --steps), got {self.warmup_steps!r}")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise UserError(f"--label-smoothing must be within 0..0.5, got {self.label_smoothing}")
        if not all(0.0 <= fraction <= 1.0 for fraction in self.decay_boundaries) or not 0 < self.decay_factor <= 1:
            raise UserError("decay boundaries must be fractions of the run and the decay factor in (0, 1]")

    def replace(self, **overrides) -> "TrainConfig":
        """A copy with the non-None `overrides` applied (validated); unknown names are a UserError."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"unknown training option(s) {', '.join(unknown)}; expected some of: "
                            f"{', '.join(field_names())}")
        return dataclasses.replace(self, **given(overrides))

    def with_seed(self) -> "TrainConfig":
        """This config with a random seed drawn if none was chosen (the drawn seed is saved with it)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbelow(2 ** 31))

    def to_json(self) -> Dict:
        return dict(dataclasses.asdict(self), decay_boundaries=list(self.decay_boundaries))

    @classmethod
    def from_json(cls, fields: Dict, base: Optional["TrainConfig"] = None) -> "TrainConfig":
        """From a saved config.json "train" part (older files also hold keys since moved or derived, which
        are ignored; fields they lack, e.g. options added since, come from `base`)."""
        names = {field.name for field in dataclasses.fields(cls)}
        known = {name: value for name, value in fields.items() if name in names}
        if "decay_boundaries" in known:
            known["decay_boundaries"] = tuple(known["decay_boundaries"])
        return dataclasses.replace(base, **known) if base is not None else cls(**known)


def field_names() -> Tuple[str, ...]:
    """The options a user may override (the fields with a flag)."""
    return tuple(f.name for f in option_fields(TrainConfig))


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


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The dataset an experiment trains and evaluates on (from its metadata.json); `dir` is None for weights
    imported without one."""

    dir: Optional[str]
    dataset: Optional[str] = None
    label_names: Optional[Tuple[str, ...]] = None
    train_examples: int = 0
    validation_examples: int = 0

    def to_json(self) -> Dict:
        return dict(dataclasses.asdict(self), label_names=list(self.label_names) if self.label_names else None)

    @classmethod
    def from_json(cls, fields: Dict) -> "DataConfig":
        names = {field.name for field in dataclasses.fields(cls)}
        known = {name: value for name, value in fields.items() if name in names}  # num_classes: the model's
        if known.get("label_names"):
            known["label_names"] = tuple(known["label_names"])
        return cls(**known)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One experiment, resolved once: the network (ModelConfig: architecture, classes, mode, precision,
    batch-norm momentum, initial-weight seed), how it trains (TrainConfig) and on what (DataConfig). Saved
    as WORKDIR/ID/config.json; the trainer, evaluator, exporter and import-weights all read this object."""

    model: ModelConfig
    train: TrainConfig
    data: DataConfig

    def to_json(self) -> Dict:
        return {"model": self.model.to_json(), "train": self.train.to_json(), "data": self.data.to_json()}

    @classmethod
    def from_json(cls, saved: Dict) -> "ExperimentConfig":
        """From config.json. Older files keep mode, precision and batch-norm momentum in "train" too (the
        model part has them as well, which wins) and may lack fields added since (the recipe fills them)."""
        model = model_config_from_json(saved["model"])
        train = TrainConfig.from_json(saved.get("train") or {}, base=recipe_for(model.family))
        return cls(model, train, DataConfig.from_json(saved.get("data") or {"dir": None}))
