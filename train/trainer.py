"""`run`: synchronous momentum-SGD training with tf.distribute, checkpoints, resume and summaries.

Resume never silently starts over: it restores the newest readable checkpoint (warning about any newer
one that is damaged or missing), stops with a UserError when checkpoints exist but none is readable,
and starts at step 0 only when the checkpoints folder holds none. `experiment.create_experiment`'s step-0
checkpoint holds zero momentum and data position 0, so `train --id` on it fine-tunes from its weights; a
checkpoint without optimizer state (folders made by older versions) is restored the same way: weights and
step, fresh momentum.
"""
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

from revnet.common.errors import UserError, error_reason
from revnet.models import build_model, get_config
from revnet.preprocess import input_pipeline, schema
from revnet.train import data_service as service, experiment, summaries
from revnet.train.distribute import make_placement
from revnet.train.input_normalization import training_normalization
from revnet.train.optimizer import DynamicLossScale, MomentumSGD
from revnet.train.preemption import Preemption, watch_sigterm
from revnet.train.step_progress import Progress
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
    # create_experiment's folders save an empty "train" part: the recipe fills what a saved config lacks.
    base = TrainConfig.from_json((saved or {}).get("train") or {}, base=recipe_for(model_config.family))
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
        gpus: Optional[int] = None, cpu_replicas: Optional[int] = None, data_service: Optional[str] = None,
        data_service_timeout: float = 600.0, progress: Optional[bool] = None, **overrides) -> Dict:
    """Train (or resume) experiment WORKDIR/ID; returns a summary dict. `overrides` are TrainConfig fields
    (flags given on the command line); on resume they override the saved config. `data_service`
    ("grpc://HOST:PORT") reads training batches from a tf.data service instead of decoding locally; if
    no batch arrives for `data_service_timeout` seconds the process saves a checkpoint and exits with
    code 1 (the blocked TensorFlow call cannot be interrupted otherwise)."""
    with watch_sigterm() as preemption:  # SIGTERM during start-up stops at once; in the loop it saves first
        workdir = workdir or DEFAULT_WORKDIR
        if data_service:
            data_service = service.service_target(data_service)
            service.wait_until_reachable(data_service, timeout_seconds=min(30.0, data_service_timeout))
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
            return _train(config, exp_dir, id, placement, progress, preemption, data_service, data_service_timeout)


def _train(config: Dict, exp_dir: str, exp_id: str, placement, progress_enabled: Optional[bool],
           preemption: Preemption, data_service: Optional[str], data_service_timeout: float) -> Dict:
    train_cfg, strategy = TrainConfig.from_json(config["train"]), placement.strategy
    model_config = experiment.model_config_from(config)
    global_batch, total_steps = train_cfg.batch_size, train_cfg.steps
    metadata = schema.load_metadata(config["data"]["dir"])
    log.info("experiment %s: %s, %s, global batch %d, %d steps%s%s%s", exp_id, model_config.name,
             placement.description, global_batch, total_steps,
             f", {train_cfg.steps_per_call} steps per call" if train_cfg.steps_per_call > 1 else "",
             ", XLA (--jit)" if train_cfg.jit else "", f", input from the tf.data service {data_service}"
             if data_service else "")
    warning = jit_warning(train_cfg, model_config)
    if warning:
        log.warning("%s", warning)

    with strategy.scope():
        model = build_model(model_config)
        loss_scale = DynamicLossScale() if train_cfg.mixed_precision == "fp16" else None
        optimizer = MomentumSGD(model.trainable_variables, train_cfg.momentum, train_cfg.weight_decay,
                                model.decay_variables, loss_scale)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    checkpoint = experiment.training_checkpoint(model, optimizer, step, position)
    ckpt_dir = experiment.checkpoints_dir(exp_dir)
    if placement.is_chief:
        for path in experiment.clean_interrupted_saves(ckpt_dir):
            log.warning("removed %s, left by a checkpoint save that was interrupted", path)
    restored = _resume(ckpt_dir, model, optimizer, step, position, placement.is_chief)
    if not placement.is_chief:  # other workers join the collective save but write to a scratch folder
        ckpt_dir = os.path.join(exp_dir, "workers", f"worker-{placement.worker_index}")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=train_cfg.keep_checkpoints, step_counter=step,
                                         checkpoint_name="ckpt")
    start_step = int(step.numpy())

    def dataset_fn(context: tf.distribute.InputContext):
        return input_pipeline.train_dataset(
            config["data"]["dir"], metadata, augmentation=train_cfg.augmentation,
            image_size=model_config.input_size, batch_size=context.get_per_replica_batch_size(global_batch),
            seed=train_cfg.seed, position=int(position.numpy()),
            num_input_pipelines=context.num_input_pipelines, input_pipeline_id=context.input_pipeline_id,
            data_service=data_service,
            job_name=f"{exp_id}-from-step-{start_step}" if context.num_input_pipelines > 1 else None)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    boundaries = train_cfg.lr_boundaries

    def learning_rate(at_step):
        return learning_rate_at(at_step, train_cfg.learning_rate, boundaries, train_cfg.decay_factor)

    train_steps = make_train_step(model, optimizer, strategy, global_batch, step, position, learning_rate,
                                  steps_per_call=train_cfg.steps_per_call, jit=train_cfg.jit)
    evaluator = _InTrainingEval(config, metadata, placement) if train_cfg.eval_every else None
    writer = tf.summary.create_file_writer(os.path.join(exp_dir, "tensorboard", "train")) \
        if placement.is_chief else tf.summary.create_noop_writer()
    progress = Progress(total_steps, start_step, global_batch, train_cfg.log_every, progress_enabled)
    # A call of several steps ends at every step where something is due, so these land exactly.
    every = [train_cfg.log_every, train_cfg.checkpoint_every] + ([train_cfg.eval_every] if evaluator else [])

    def save(reason: str) -> str:
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables):
            raise FloatingPointError(f"weights became non-finite by step {int(step.numpy())}; not saving; the last "
                                     f"good checkpoint {manager.latest_checkpoint or '(none yet)'} was kept")
        path = manager.save(checkpoint_number=step)
        if not placement.is_chief:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        log.info("saved checkpoint %s (%s)", path, reason)
        return path

    def stalled(seconds: float) -> None:
        """Watchdog thread: the main thread is stuck inside TensorFlow, so save from here and exit."""
        try:
            kept = f"progress up to step {int(step.numpy())} is saved in {save('tf.data service stalled')}"
        except Exception as error:  # noqa: BLE001 - the exit below must happen whatever the save does
            kept = f"no checkpoint could be saved ({error})"
        log.error("no training batch from the tf.data service %s for %.0f s (TensorFlow waits for a worker that "
                  "died mid-epoch until it returns at the same address); %s; restart the workers and resume with "
                  "--id %s", data_service, seconds, kept, exp_id)
        logging.shutdown()
        os._exit(1)

    watchdog = service.StallWatchdog(data_service, data_service_timeout, stalled) if data_service else None
    status, last_eval = "completed", None
    preemption.training_started()
    with writer.as_default():
        current = start_step
        while current < total_steps:
            count = min([train_cfg.steps_per_call, total_steps - current] + [n - current % n for n in every])
            try:
                with watchdog.call() if watchdog and current > start_step else contextlib.nullcontext():
                    loss, accuracy, finite = train_steps(iterator, tf.constant(count))
            except (tf.errors.DataLossError, tf.errors.UnavailableError) as error:
                progress.close()
                raise _input_failure(error, config, metadata, data_service, save, int(step.numpy())) from None
            except tf.errors.InvalidArgumentError as error:
                if train_cfg.jit and current == start_step:
                    raise UserError(f"--jit: XLA could not compile the training step of {model_config.name} "
                                    f"({error_reason(error)}); train without --jit") from None
                raise
            loss, accuracy, previous, current = float(loss), float(accuracy), current, current + count
            if not bool(finite):
                good = manager.latest_checkpoint
                progress.close()
                where = f"step {current}" if count == 1 else f"steps {previous + 1}-{current}"
                raise FloatingPointError(
                    f"loss became {loss if not math.isfinite(loss) else 'non-finite'} at {where}; training stopped "
                    f"and the last good checkpoint "
                    f"{good or '(none yet)'} was kept; lower --lr or check the data")
            line = progress.update(current, loss, accuracy)
            if line is not None:
                memory = _memory_peak_bytes(placement.memory_device)
                summaries.scalar("loss", loss, step=current)
                summaries.scalar("accuracy", accuracy, step=current)
                summaries.scalar("learning_rate", float(learning_rate(current - 1)), step=current)
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
        if watchdog:
            watchdog.close()
        if status == "completed" and (manager.latest_checkpoint is None or
                                      not manager.latest_checkpoint.endswith(f"ckpt-{current}")):
            save("final")
    writer.flush()
    summary = {"id": exp_id, "experiment_dir": os.path.abspath(exp_dir), "status": status, "model": model_config.name,
               "start_step": start_step, "step": int(step.numpy()), "data_position": int(position.numpy()),
               "replicas": strategy.num_replicas_in_sync, "global_batch_size": global_batch,
               "last_loss": progress.last_loss, "last_accuracy": progress.last_accuracy,
               "examples_per_second": progress.examples_per_second(), "checkpoint": manager.latest_checkpoint}
    if restored is not None:
        summary["resumed_from"] = restored
    if last_eval is not None:
        summary["validation"] = last_eval
    log.info("finished: %s at step %d", status, summary["step"])
    return summary


def _resume(ckpt_dir: str, model, optimizer, step, position, is_chief: bool) -> Optional[str]:
    """Restore the newest readable checkpoint of `ckpt_dir` (see the module docstring); returns its path, or
    None for a fresh start."""
    candidates, problems = experiment.resume_candidates(ckpt_dir)
    for problem in problems:
        log.warning("%s", problem)
    skipped = []
    for path in candidates:
        try:
            names = experiment.checkpoint_variable_names(path)
            if experiment.holds_optimizer(names):
                # A run with a float16 loss scale can resume a checkpoint without one (a float32 or bf16 run,
                # imported weights): everything else is restored and the scale starts at its initial value.
                with_scale = optimizer.loss_scale is None or experiment.holds_loss_scale(names)
                if not with_scale:
                    log.info("%s holds no float16 loss scale (it was not saved by an fp16 run): the scale starts "
                             "at %g", path, float(optimizer.loss_scale.scale.numpy()))
                restorable = experiment.training_checkpoint(model, optimizer, step, position, with_scale)
                experiment.restore_checkpoint(restorable, path).assert_existing_objects_matched()
                log.info("resumed from %s at step %d (data position %d)", path, int(step.numpy()),
                         int(position.numpy()))
            else:
                experiment.restore_checkpoint(tf.train.Checkpoint(model=model, step=step), path) \
                    .assert_existing_objects_matched()
                log.info("fine-tuning from the weights in %s (step %d; it holds no optimizer state, so momentum "
                         "starts at zero)", path, int(step.numpy()))
        except (experiment.UnreadableCheckpoint, tf.errors.OpError) as error:
            log.warning("%s; trying an older checkpoint", error if isinstance(error, UserError) else
                        f"checkpoint {path} is unreadable ({error_reason(error)})")
            skipped.append(path)
            continue
        if (skipped or problems) and is_chief:
            # Drop what could not be read from the state file, so CheckpointManager starts from a true list.
            readable = [os.path.basename(p) for p in reversed(candidates)
                        if experiment.checkpoint_step(p) <= experiment.checkpoint_step(path) and p not in skipped]
            tf.compat.v1.train.update_checkpoint_state(ckpt_dir, os.path.basename(path),
                                                       all_model_checkpoint_paths=readable)
            log.warning("resumed from %s, the newest readable checkpoint%s", path,
                        f" (skipped: {', '.join(skipped)})" if skipped else "")
        return path
    if candidates or problems or experiment.has_checkpoint_files(ckpt_dir):
        raise UserError(f"no readable checkpoint in {ckpt_dir} ({len(skipped)} damaged: "
                        f"{', '.join(os.path.basename(p) for p in skipped) or 'none with an .index file'}); "
                        f"refusing to start again at step 0 over a trained experiment: restore the files, or "
                        f"move {ckpt_dir} away to start afresh")
    log.info("no checkpoint yet: starting at step 0")
    return None


def jit_warning(train_cfg: TrainConfig, model_config) -> Optional[str]:
    """The warning --jit deserves for this model, if any: XLA compiles the reversible stack's while_loops,
    but ran them 17-50x slower than TF's executor in `benchmark train` on CPU."""
    if train_cfg.jit and model_config.architecture == "revnet" and model_config.mode == "reversible":
        return ("--jit with the reversible stack: XLA compiles its while_loops, but on CPU it ran 17-50x slower "
                "than without --jit (README, Training throughput); compare both before a long run")
    return None


def _input_failure(error, config: Dict, metadata: Dict, data_service: Optional[str], save, at_step: int) -> Exception:
    """A UserError naming the damaged training shard (after saving the progress so far), or a clear error
    when the tf.data service stopped answering."""
    try:
        saved = save("input failure")
    except FloatingPointError:
        saved = None
    kept = f"; progress up to step {at_step} is saved in {saved}" if saved else ""
    if isinstance(error, tf.errors.UnavailableError):
        return RuntimeError(f"the tf.data service {data_service} stopped answering at step {at_step} "
                            f"({error_reason(error)}){kept}; restart it and resume with the same --id")
    log.error("reading the training data failed (%s); checking every training shard", error_reason(error))
    damaged = input_pipeline.find_damaged_shard(config["data"]["dir"], metadata, "train")
    if damaged is None:
        return UserError(f"reading the training data in {config['data']['dir']} failed ({error_reason(error)}), "
                         f"but every shard reads in full now{kept}")
    return UserError(f"training shard {damaged[0]} is damaged ({damaged[1]}){kept}; re-create the dataset with "
                     f"`cli.py preprocess ... --overwrite`")


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
