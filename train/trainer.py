"""`run`: synchronous momentum-SGD training with tf.distribute, checkpoints, resume and summaries."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import sys
import time
from typing import Dict, Optional

import tensorflow as tf

from revnet.common.errors import UserError
from revnet.models import build_model, get_config
from revnet.preprocess import input_pipeline, schema
from revnet.train import experiment, summaries
from revnet.train.distribute import make_placement
from revnet.train.normalization import training_normalization
from revnet.train.optimizer import DynamicLossScale, MomentumSGD
from revnet.train.preemption import Preemption, watch_sigterm
from revnet.train.progress import Progress
from revnet.train.config import DEFAULT_WORKDIR, TrainConfig, learning_rate_at, recipe_for
from revnet.train.steps import copy_weights, make_eval_step, make_train_step, run_evaluation

log = logging.getLogger(__name__)



def new_experiment_id(model_name: str) -> str:
    return f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def resolve_config(model: str, data: Optional[str], exp_dir: str, saved: Optional[Dict], overrides: Dict) -> Dict:
    """The experiment's config: paper recipe <- saved config (on resume) <- explicit flags."""
    model_config = get_config(model)
    if saved is not None and saved["model"]["name"] != model_config.name:
        raise UserError(f"experiment {os.path.basename(exp_dir)!r} was trained with model {saved['model']['name']!r}, "
                        f"not {model_config.name!r}; use another --id or --model {saved['model']['name']}")
    data_dir = data or (saved or {}).get("data", {}).get("dir")
    if not data_dir:
        raise UserError("--data is required for a new experiment (a folder written by `cli.py preprocess`)")
    metadata = schema.load_metadata(data_dir)
    num_classes = int(metadata["num_classes"])
    schema.split_files(data_dir, metadata, "train")
    base = TrainConfig.from_json(saved["train"]) if saved is not None else recipe_for(model_config.family)
    train = base.replace(**overrides).with_seed()
    if train.bn_momentum is None:
        train = train.replace(bn_momentum=model_config.bn_momentum)
    if saved is not None:
        if saved["model"]["num_classes"] != num_classes:
            raise UserError(f"model of experiment {os.path.basename(exp_dir)!r} has {saved['model']['num_classes']} "
                            f"classes but the data in {data_dir!r} has {num_classes}; use the data it was trained on")
        model_json = dict(saved["model"], mode=train.mode, compute_dtype=train.compute_dtype,
                          bn_momentum=train.bn_momentum)
    else:
        model_json = get_config(model, num_classes=num_classes, mode=train.mode, seed=train.seed % 2 ** 31,
                                compute_dtype=train.compute_dtype, bn_momentum=train.bn_momentum,
                                **training_normalization(model_config, metadata, data_dir)).to_json()
    return {"model": model_json, "train": train.to_json(),
            "data": {"dir": os.path.abspath(data_dir), "dataset": metadata.get("dataset"), "num_classes": num_classes,
                     "label_names": metadata.get("label_names"),
                     "train_examples": input_pipeline.split_size(metadata, "train"),
                     "validation_examples": (input_pipeline.split_size(metadata, "validation")
                                             if "validation" in metadata["splits"] else 0)}}


@contextlib.contextmanager
def _train_log(exp_dir: str, enabled: bool):
    """Copy the trainer's log records into WORKDIR/ID/train.log for the duration of the run."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(os.path.join(exp_dir, "train.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("revnet.train")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


def _memory_peak_bytes(device: str) -> Optional[int]:
    try:
        return int(tf.config.experimental.get_memory_info(device)["peak"])
    except (ValueError, RuntimeError):
        return None


def run(model: str, data: Optional[str] = None, id: Optional[str] = None, workdir: Optional[str] = None,
        gpus: Optional[int] = None, cpu_replicas: Optional[int] = None, progress: Optional[bool] = None,
        **overrides) -> Dict:
    """Train (or resume) experiment WORKDIR/ID; returns a summary dict. `overrides` are TrainConfig fields
    (flags given on the command line); on resume they override the saved config."""
    with watch_sigterm() as preemption:  # SIGTERM during start-up stops at once; in the loop it saves first
        workdir = workdir or DEFAULT_WORKDIR
        placement = make_placement(gpus, cpu_replicas)
        if id is None:
            if placement.num_workers > 1:
                raise UserError("--id is required when TF_CONFIG names several workers (they must share one experiment)")
            id = new_experiment_id(get_config(model).name)
            announce_id = True
        else:
            announce_id = False
        exp_dir = experiment.experiment_dir(workdir, id)
        config_path = os.path.join(exp_dir, experiment.CONFIG_FILE)
        saved = experiment.load_config(workdir, id)[1] if os.path.exists(config_path) else None
        config = resolve_config(model, data, exp_dir, saved, overrides)
        strategy = placement.strategy
        global_batch = config["train"]["batch_size"]
        if global_batch % strategy.num_replicas_in_sync:
            raise UserError(f"--batch-size {global_batch} must be divisible by the {strategy.num_replicas_in_sync} replicas")
        if announce_id:
            print(f"experiment id: {id}", file=sys.stderr)
        if placement.is_chief:
            os.makedirs(exp_dir, exist_ok=True)
            experiment.save_config(exp_dir, config)
        with _train_log(exp_dir, placement.is_chief):
            return _train(config, exp_dir, id, placement, progress, preemption)


def _train(config: Dict, exp_dir: str, exp_id: str, placement, progress_enabled: Optional[bool],
           preemption: Preemption) -> Dict:
    train_cfg, strategy = TrainConfig.from_json(config["train"]), placement.strategy
    model_config = experiment.model_config_from(config)
    global_batch, total_steps = train_cfg.batch_size, train_cfg.steps
    metadata = schema.load_metadata(config["data"]["dir"])
    log.info("experiment %s: %s, %s, global batch %d, %d steps", exp_id, model_config.name, placement.description,
             global_batch, total_steps)

    with strategy.scope():
        model = build_model(model_config)
        loss_scale = DynamicLossScale() if train_cfg.mixed_precision == "fp16" else None
        optimizer = MomentumSGD(model.trainable_variables, train_cfg.momentum, train_cfg.weight_decay,
                                model.decay_variables, loss_scale)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, data_position=position)
    ckpt_dir = experiment.checkpoints_dir(exp_dir)
    if not placement.is_chief:  # other workers join the collective save but write to a scratch folder
        ckpt_dir = os.path.join(exp_dir, "workers", f"worker-{placement.worker_index}")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=train_cfg.keep_checkpoints, step_counter=step,
                                         checkpoint_name="ckpt")
    latest = tf.train.latest_checkpoint(experiment.checkpoints_dir(exp_dir))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        log.info("resumed from %s at step %d (data position %d)", latest, int(step.numpy()), int(position.numpy()))
    start_step = int(step.numpy())

    def dataset_fn(context: tf.distribute.InputContext):
        return input_pipeline.train_dataset(
            config["data"]["dir"], metadata, augmentation=train_cfg.augmentation,
            image_size=model_config.input_size, batch_size=context.get_per_replica_batch_size(global_batch),
            seed=train_cfg.seed, position=int(position.numpy()),
            num_input_pipelines=context.num_input_pipelines, input_pipeline_id=context.input_pipeline_id)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(model, optimizer, strategy, global_batch, step, position)
    evaluator = _InTrainingEval(config, metadata, placement) if train_cfg.eval_every else None
    writer = tf.summary.create_file_writer(os.path.join(exp_dir, "tensorboard", "train")) \
        if placement.is_chief else tf.summary.create_noop_writer()
    progress = Progress(total_steps, start_step, global_batch, train_cfg.log_every, progress_enabled)
    boundaries = train_cfg.lr_boundaries

    def save(reason: str) -> str:
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables):
            raise FloatingPointError(f"weights became non-finite by step {int(step.numpy())}; not saving; the last "
                                     f"good checkpoint {manager.latest_checkpoint or '(none yet)'} was kept")
        path = manager.save(checkpoint_number=step)
        if not placement.is_chief:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("saved checkpoint %s (%s)", path, reason)
        return path

    status, last_eval = "completed", None
    preemption.training_started()
    with writer.as_default():
        current = start_step
        while current < total_steps:
            learning_rate = learning_rate_at(current, train_cfg.learning_rate, boundaries, train_cfg.decay_factor)
            loss, accuracy = train_step(iterator, learning_rate)
            loss, accuracy, current = float(loss), float(accuracy), current + 1
            if not math.isfinite(loss):
                good = manager.latest_checkpoint
                progress.close()
                raise FloatingPointError(
                    f"loss became {loss} at step {current}; training stopped and the last good checkpoint "
                    f"{good or '(none yet)'} was kept; lower --lr or check the data")
            line = progress.update(current, loss, accuracy)
            if line is not None:
                memory = _memory_peak_bytes(placement.memory_device)
                summaries.scalar("loss", loss, step=current)
                summaries.scalar("accuracy", accuracy, step=current)
                summaries.scalar("learning_rate", float(learning_rate), step=current)
                summaries.scalar("examples_per_second", line["examples_per_second"], step=current)
                if memory is not None:
                    summaries.scalar("memory_peak_bytes", memory, step=current)
            if evaluator and (current % train_cfg.eval_every == 0 or current == total_steps):
                last_eval = evaluator(model, current)
            if current % train_cfg.checkpoint_every == 0 and current < total_steps:
                save("periodic")
            if preemption.requested:
                progress.close()
                save("SIGTERM")
                status = "preempted"
                break
        progress.close()
        if status == "completed" and (manager.latest_checkpoint is None or
                                      not manager.latest_checkpoint.endswith(f"ckpt-{current}")):
            save("final")
    writer.flush()
    summary = {"id": exp_id, "experiment_dir": os.path.abspath(exp_dir), "status": status, "model": model_config.name,
               "start_step": start_step, "step": int(step.numpy()), "data_position": int(position.numpy()),
               "replicas": strategy.num_replicas_in_sync, "global_batch_size": global_batch,
               "last_loss": progress.last_loss, "last_accuracy": progress.last_accuracy,
               "examples_per_second": progress.examples_per_second(), "checkpoint": manager.latest_checkpoint}
    if last_eval is not None:
        summary["validation"] = last_eval
    log.info("finished: %s at step %d", status, summary["step"])
    return summary


class _InTrainingEval:
    """--eval-every: copy the weights into a plain model and evaluate the full validation split."""

    def __init__(self, config: Dict, metadata: Dict, placement):
        self.placement = placement
        self.model = build_model(experiment.model_config_from(config))
        self.eval_step = make_eval_step(self.model)
        self.dataset = input_pipeline.eval_dataset(
            config["data"]["dir"], metadata, "validation", preprocessing=self.model.config.preprocessing,
            image_size=self.model.config.input_size, batch_size=config["train"]["eval_batch_size"])

    def __call__(self, model, step: int) -> Optional[Dict]:
        copy_weights(model, self.model)  # every worker joins the reads of replica-synced variables
        if not self.placement.is_chief:
            return None
        result = run_evaluation(self.eval_step, self.dataset)
        log.info("validation at step %d: top1=%.4f top5=%.4f loss=%.4f (%d examples)", step, result["top1"],
                 result["top5"], result["loss"], result["examples"])
        summaries.scalar("validation/top1", result["top1"], step=step)
        summaries.scalar("validation/top5", result["top5"], step=step)
        summaries.scalar("validation/loss", result["loss"], step=step)
        return dict(result, step=step)
