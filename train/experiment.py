"""The experiment folder: the contract between the trainer, the evaluator and the exporter.

    WORKDIR/ID/config.json      {"model": ModelConfig as JSON, "data": {"dir", "dataset", "num_classes",
                                 "label_names", "train_examples", "validation_examples"}, "train": {...}}
    WORKDIR/ID/checkpoints/     tf.train.CheckpointManager files (ckpt-N), checkpoint = Checkpoint(model=, optimizer=, step=, ...);
                                `create_experiment` writes ckpt-0 with the model, zero momentum and data position 0
    WORKDIR/ID/best/            a copy of the best evaluated checkpoint (ckpt-N files + best.json)
    WORKDIR/ID/eval.jsonl       one line per evaluated checkpoint
    WORKDIR/ID/train.log        the trainer's log
    WORKDIR/ID/tensorboard/     summaries (train/, eval/)
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Dict, List, Tuple

import tensorflow as tf

from revnet.common.errors import UserError, error_reason
from revnet.common.fileio import atomic_write_json, read_json
from revnet.models.registry import ModelConfig, build_model
from revnet.train.config import DEFAULT_WORKDIR
from revnet.train.optimizer import MomentumSGD

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATE_FILE = "checkpoint"   # CheckpointManager's text-proto list of checkpoints
_INDEX = re.compile(r"^ckpt-(\d+)\.index$")
# What a save killed half-way leaves: the sharded saver's staging folder and the state file's temporary copy.
_INTERRUPTED_SAVE = re.compile(r"^(ckpt-\d+_temp|checkpoint\.tmp[0-9a-f]+)$")
UNREADABLE = (tf.errors.OpError, IndexError, ValueError)   # what restoring a damaged checkpoint raises


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


def clean_interrupted_saves(ckpt_dir: str) -> List[str]:
    """Delete the staging folders and temporary state files that a save killed half-way leaves (only
    those names, which TensorFlow's saver writes); returns what was removed."""
    removed = []
    for name in sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []:
        path = os.path.join(ckpt_dir, name)
        if _INTERRUPTED_SAVE.match(name):
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            removed.append(path)
    return removed


def checkpoint_step(path: str) -> int:
    """N of a `.../ckpt-N` prefix."""
    return int(path.rsplit("-", 1)[-1])


def resume_candidates(ckpt_dir: str) -> Tuple[List[str], List[str]]:
    """(checkpoint prefixes whose .index exists, newest first; problems found, each naming a checkpoint).

    The state file is only a list: a checkpoint it names whose .index is gone is a problem, and a
    checkpoint on disk that it does not name (e.g. the state file itself is damaged) is still a candidate.
    """
    problems = []
    on_disk = {int(m.group(1)) for m in map(_INDEX.match, os.listdir(ckpt_dir)) if m} if os.path.isdir(ckpt_dir) else set()
    named: List[str] = []
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
        if state is not None:
            named = list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]
    except UNREADABLE as error:
        problems.append(f"the checkpoint list {os.path.join(ckpt_dir, STATE_FILE)} is unreadable "
                        f"({error_reason(error)})")
    for path in dict.fromkeys(named):
        name = os.path.basename(path)
        if re.fullmatch(r"ckpt-\d+", name) and checkpoint_step(name) not in on_disk:
            problems.append(f"checkpoint {os.path.join(ckpt_dir, name)} is named in {os.path.join(ckpt_dir, STATE_FILE)} "
                            f"but its .index file is missing")
    candidates = [os.path.join(ckpt_dir, f"ckpt-{step}") for step in sorted(on_disk, reverse=True)]
    return candidates, problems


def has_checkpoint_files(ckpt_dir: str) -> bool:
    """Whether anything a save writes (state file, ckpt-N.*) is in `ckpt_dir`."""
    return os.path.isdir(ckpt_dir) and any(name == STATE_FILE or name.startswith("ckpt-")
                                           for name in os.listdir(ckpt_dir))


class UnreadableCheckpoint(UserError):
    """A checkpoint that is damaged, incomplete or gone (the message names it)."""


def restore_checkpoint(checkpoint: tf.train.Checkpoint, path: str):
    """`checkpoint.restore(path)`, with a damaged or missing checkpoint raised as UnreadableCheckpoint."""
    try:
        return checkpoint.restore(path)
    except UNREADABLE as error:
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable ({error_reason(error)}); it is damaged or "
                                   f"incomplete") from None


def checkpoint_variable_names(path: str) -> List[str]:
    """The variable names stored in checkpoint `path` (an UnreadableCheckpoint when it does not read)."""
    try:
        return [name for name, _ in tf.train.list_variables(path)]
    except UNREADABLE as error:
        raise UnreadableCheckpoint(f"checkpoint {path} is unreadable ({error_reason(error)})") from None


def holds_optimizer(names: List[str]) -> bool:
    """Whether a checkpoint with these variable names holds optimizer state (create_experiment's step-0
    checkpoint of older versions does not)."""
    return any(name.startswith("optimizer/") for name in names)


def holds_loss_scale(names: List[str]) -> bool:
    """Whether a checkpoint with these variable names holds a float16 loss scale (only runs trained with
    --mixed-precision fp16 save one)."""
    return any(name.startswith("optimizer/loss_scale/") for name in names)


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


def training_checkpoint(model, optimizer, step, position, with_loss_scale: bool = True) -> tf.train.Checkpoint:
    """The trainer's checkpoint layout (model, optimizer, step, data position), written by the trainer and by
    create_experiment. Without `with_loss_scale`: the same paths minus the optimizer's loss scale."""
    state = optimizer if with_loss_scale else optimizer.state_without_loss_scale()
    return tf.train.Checkpoint(model=model, optimizer=state, step=step, data_position=position)


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
    checkpoint = training_checkpoint(model, optimizer, step, position)
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
    restore_checkpoint(tf.train.Checkpoint(model=model), path).expect_partial()
    return model, config, path
