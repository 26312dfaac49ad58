"""The experiment folder: the contract between the trainer, the evaluator and the exporter.

    WORKDIR/ID/config.json      {"model": ModelConfig as JSON, "data": {"dir", "dataset", "num_classes",
                                 "label_names", "train_examples", "validation_examples"}, "train": {...}}
    WORKDIR/ID/checkpoints/     tf.train.CheckpointManager files (ckpt-N), checkpoint = Checkpoint(model=, optimizer=, step=, ...)
    WORKDIR/ID/best/            a copy of the best evaluated checkpoint (ckpt-N files + best.json)
    WORKDIR/ID/eval.jsonl       one line per evaluated checkpoint
    WORKDIR/ID/train.log        the trainer's log
    WORKDIR/ID/tensorboard/     summaries (train/, eval/)
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import tensorflow as tf

from revnet.common.errors import UserError
from revnet.common.fileio import atomic_write_json, read_json
from revnet.models.registry import ModelConfig, build_model
from revnet.train.config import DEFAULT_WORKDIR
from revnet.train.optimizer import MomentumSGD

CONFIG_FILE = "config.json"


def experiment_dir(workdir: str, exp_id: str) -> str:
    return os.path.join(workdir or DEFAULT_WORKDIR, exp_id)


def checkpoints_dir(exp_dir: str) -> str:
    return os.path.join(exp_dir, "checkpoints")


def best_dir(exp_dir: str) -> str:
    return os.path.join(exp_dir, "best")


def save_config(exp_dir: str, config: Dict) -> None:
    atomic_write_json(os.path.join(exp_dir, CONFIG_FILE), config)


def load_config(workdir: str, exp_id: str) -> Tuple[str, Dict]:
    """(experiment folder, resolved config) or a UserError when the experiment does not exist."""
    exp_dir = experiment_dir(workdir, exp_id)
    path = os.path.join(exp_dir, CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"no experiment {exp_id!r} under {workdir or DEFAULT_WORKDIR!r} (missing {path})")
    return exp_dir, read_json(path)


def model_config_from(config: Dict, **overrides) -> ModelConfig:
    fields = dict(config["model"])
    fields.setdefault("preprocessing", fields["family"])  # configs saved before the field existed
    for key in ("units_per_stage", "channels_per_stage", "strides"):
        fields[key] = tuple(fields[key])
    fields.update(overrides)
    return ModelConfig(**fields)


def resolve_checkpoint(exp_dir: str, which: str = "latest") -> str:
    """A checkpoint prefix for "latest", "best" or an explicit path."""
    if which == "latest":
        path = tf.train.latest_checkpoint(checkpoints_dir(exp_dir))
    elif which == "best":
        path = tf.train.latest_checkpoint(best_dir(exp_dir))
        if path is None:
            raise UserError(f"experiment {exp_dir!r} has no best checkpoint yet; run `cli.py eval` or use --checkpoint latest")
    else:
        path = which if tf.io.gfile.exists(which + ".index") else None
    if path is None:
        raise UserError(f"no checkpoint {which!r} found for experiment {exp_dir!r}")
    return path


def create_experiment(workdir: str, exp_id: str, model, data: Dict, train: Dict) -> str:
    """The one way to make an experiment folder outside the trainer: config.json for `model` (a built
    network) and a checkpoint of its weights at step 0, which `eval`, `export` and `train --id`
    (fine-tuning) use unchanged. Refuses an existing experiment. Returns the folder."""
    exp_dir = experiment_dir(workdir, exp_id)
    if os.path.exists(os.path.join(exp_dir, CONFIG_FILE)):
        raise UserError(f"experiment {exp_id!r} already exists under {workdir or DEFAULT_WORKDIR!r}; choose another id")
    os.makedirs(exp_dir, exist_ok=True)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    # The trainer's checkpoint layout (fresh momentum, data position 0), so `train --id` resumes from it.
    optimizer = MomentumSGD(model.trainable_variables, 0.0, 0.0, [])
    position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, data_position=position)
    manager = tf.train.CheckpointManager(checkpoint, checkpoints_dir(exp_dir),
                                         max_to_keep=None, step_counter=step, checkpoint_name="ckpt")
    manager.save(checkpoint_number=0)
    save_config(exp_dir, {"model": model.config.to_json(), "data": data, "train": train})
    return exp_dir


def restore_model(workdir: str, exp_id: str, checkpoint: str = "latest", **overrides):
    """(model with restored weights, config, checkpoint path) for inference or export."""
    exp_dir, config = load_config(workdir, exp_id)
    model = build_model(model_config_from(config, **overrides))
    path = resolve_checkpoint(exp_dir, checkpoint)
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return model, config, path
