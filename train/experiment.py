"""The experiment folder: the contract between the trainer, the evaluator and the exporter.

    WORKDIR/ID/config.json      ExperimentConfig.to_json(): {"model": ModelConfig, "train": TrainConfig,
                                "data": {"dir", "dataset", "label_names", "train_examples", "validation_examples"}}
    WORKDIR/ID/checkpoints/     tf.train.CheckpointManager files (ckpt-N),
                                checkpoint = Checkpoint(model=, optimizer=, step=, ...);
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
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from revnet.common.errors import UserError, error_reason
from revnet.common.fileio import atomic_write_json, read_json
from revnet.models.registry import build_model
from revnet.preprocess import input_pipeline
from revnet.train.train_config import DEFAULT_WORKDIR, DataConfig, ExperimentConfig, TrainConfig, recipe_for
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


def save_config(exp_dir: str, config: ExperimentConfig) -> None:
    atomic_write_json(os.path.join(exp_dir, CONFIG_FILE), config.to_json())


def read_config(exp_dir: str) -> Optional[ExperimentConfig]:
    """The experiment's config, or None when the folder holds none yet."""
    path = os.path.join(exp_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    try:
        return ExperimentConfig.from_json(read_json(path))
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not an experiment config this version can read ({error_reason(error)})") from None


def load_config(workdir: str, exp_id: str) -> Tuple[str, ExperimentConfig]:
    """(experiment folder, its config) or a UserError when the experiment does not exist."""
    exp_dir = experiment_dir(workdir, exp_id)
    config = read_config(exp_dir)
    if config is None:
        raise UserError(f"no experiment {exp_id!r} under {workdir or DEFAULT_WORKDIR!r} "
                        f"(missing {os.path.join(exp_dir, CONFIG_FILE)})")
    return exp_dir, config


def dataset_config(data_dir: str, metadata: Dict) -> DataConfig:
    """What an experiment records of the dataset in `data_dir` (a finished preprocess output)."""
    splits = metadata.get("splits", {})
    return DataConfig(dir=os.path.abspath(data_dir), dataset=metadata.get("dataset"),
                      label_names=tuple(metadata["label_names"]) if metadata.get("label_names") else None,
                      train_examples=input_pipeline.split_size(metadata, "train") if "train" in splits else 0,
                      validation_examples=(input_pipeline.split_size(metadata, "validation")
                                           if "validation" in splits else 0))


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
    listing = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    on_disk = {int(m.group(1)) for m in map(_INDEX.match, listing) if m}
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
            problems.append(f"checkpoint {os.path.join(ckpt_dir, name)} is named in "
                            f"{os.path.join(ckpt_dir, STATE_FILE)} but its .index file is missing")
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
            raise UserError(f"experiment {exp_dir!r} has no best checkpoint yet; run `cli.py eval` or use "
                            "--checkpoint latest")
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


def create_experiment(workdir: str, exp_id: str, model, data: DataConfig, train: Optional[TrainConfig] = None) -> str:
    """The one way to make an experiment folder outside the trainer: config.json (`model`'s config, `data`,
    and `train` or the paper recipe for the model's family) and a checkpoint of `model`'s weights at step 0,
    which `eval`, `export` and `train --id` (fine-tuning) use unchanged. Refuses an existing experiment.
    Returns the folder."""
    config = ExperimentConfig(model.config, train or recipe_for(model.config.family), data)
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
    save_config(exp_dir, config)
    return exp_dir


def restore_model(workdir: str, exp_id: str, checkpoint: str = "latest", **model_overrides):
    """(model with restored weights, ExperimentConfig, checkpoint path) for inference or export;
    `model_overrides` (e.g. mode) change how the restored network runs, not its weights."""
    exp_dir, config = load_config(workdir, exp_id)
    model = build_model(config.model.replace(**model_overrides))
    path = resolve_checkpoint(exp_dir, checkpoint)
    restore_checkpoint(tf.train.Checkpoint(model=model), path).expect_partial()
    return model, config, path


def resume_newest(ckpt_dir: str, model, optimizer, step, position, is_chief: bool) -> Optional[str]:
    """Restore the newest readable checkpoint of `ckpt_dir` into the trainer's state; returns its path, or None
    for a fresh start. Never silently starts over: a damaged or missing newer checkpoint is skipped with a
    warning, and checkpoint files of which none reads are a UserError. A checkpoint without optimizer state
    (create_experiment's of older versions) gives weights and step, with fresh momentum."""
    candidates, problems = resume_candidates(ckpt_dir)
    for problem in problems:
        log.warning("%s", problem)
    skipped = []
    for path in candidates:
        try:
            names = checkpoint_variable_names(path)
            if holds_optimizer(names):
                # A run with a float16 loss scale can resume a checkpoint without one (a float32 or bf16 run,
                # imported weights): everything else is restored and the scale starts at its initial value.
                with_scale = optimizer.loss_scale is None or holds_loss_scale(names)
                if not with_scale:
                    log.info("%s holds no float16 loss scale (it was not saved by an fp16 run): the scale starts "
                             "at %g", path, float(optimizer.loss_scale.scale.numpy()))
                restorable = training_checkpoint(model, optimizer, step, position, with_scale)
                restore_checkpoint(restorable, path).assert_existing_objects_matched()
                log.info("resumed from %s at step %d (data position %d)", path, int(step.numpy()),
                         int(position.numpy()))
            else:
                restore_checkpoint(tf.train.Checkpoint(model=model, step=step), path) \
                    .assert_existing_objects_matched()
                log.info("fine-tuning from the weights in %s (step %d; it holds no optimizer state, so momentum "
                         "starts at zero)", path, int(step.numpy()))
        except (UnreadableCheckpoint, tf.errors.OpError) as error:
            log.warning("%s; trying an older checkpoint", error if isinstance(error, UserError) else
                        f"checkpoint {path} is unreadable ({error_reason(error)})")
            skipped.append(path)
            continue
        if (skipped or problems) and is_chief:
            # Drop what could not be read from the state file, so CheckpointManager starts from a true list.
            readable = [os.path.basename(p) for p in reversed(candidates)
                        if checkpoint_step(p) <= checkpoint_step(path) and p not in skipped]
            tf.compat.v1.train.update_checkpoint_state(ckpt_dir, os.path.basename(path),
                                                       all_model_checkpoint_paths=readable)
            log.warning("resumed from %s, the newest readable checkpoint%s", path,
                        f" (skipped: {', '.join(skipped)})" if skipped else "")
        return path
    if candidates or problems or has_checkpoint_files(ckpt_dir):
        raise UserError(f"no readable checkpoint in {ckpt_dir} ({len(skipped)} damaged: "
                        f"{', '.join(os.path.basename(p) for p in skipped) or 'none with an .index file'}); "
                        f"refusing to start again at step 0 over a trained experiment: restore the files, or "
                        f"move {ckpt_dir} away to start afresh")
    log.info("no checkpoint yet: starting at step 0")
    return None
