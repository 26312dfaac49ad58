"""`run`: synchronous momentum-SGD training with tf.distribute, checkpoints, resume and summaries.

A run is resolved once into an ExperimentConfig (`resolve_experiment`: the paper recipe, then the saved
config on resume, then the flags), saved as config.json, and trained by `TrainingRun`, whose steps read
top to bottom: build the state, restore or start, make the input and the compiled step, loop, summarise.

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
from revnet.common.fileio import atomic_write_json
from revnet.common.options import given, option_fields
from revnet.models import build_model, get_config
from revnet.models.parts import parse_freeze
from revnet.models.registry import ModelConfig
from revnet.preprocess import input_pipeline, schema
from revnet.train import data_service as service, experiment, summaries
from revnet.train.train_config import DEFAULT_WORKDIR, FINE_TUNING, ExperimentConfig, TrainConfig, recipe_for
from revnet.train.distribute import make_placement
from revnet.train.input_normalization import training_normalization
from revnet.train.optimizer import DynamicLossScale, MomentumSGD
from revnet.train.preemption import Preemption, watch_sigterm
from revnet.train.schedule import learning_rate_fn
from revnet.train.step_progress import Progress
from revnet.train.steps import copy_weights, make_eval_step, make_train_step, run_evaluation

log = logging.getLogger(__name__)

TRAIN_OPTIONS = tuple(f.name for f in option_fields(TrainConfig))
MODEL_OPTIONS = tuple(f.name for f in option_fields(ModelConfig))   # mode, compute_dtype, bn_momentum


def new_experiment_id(model_name: str) -> str:
    return f"{model_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def resolve_experiment(model: str, data: Optional[str], exp_dir: str, saved: Optional[ExperimentConfig],
                       overrides: Dict) -> ExperimentConfig:
    """The experiment's config, resolved once: paper recipe <- saved config (on resume) <- explicit flags.
    `overrides` are TrainConfig option fields and the ModelConfig ones (mode, compute_dtype, bn_momentum)."""
    unknown = sorted(set(overrides) - set(TRAIN_OPTIONS) - set(MODEL_OPTIONS))
    if unknown:
        raise UserError(f"unknown training option(s) {', '.join(unknown)}; expected some of: "
                        f"{', '.join(TRAIN_OPTIONS + MODEL_OPTIONS)}")
    train_overrides = {k: v for k, v in overrides.items() if k in TRAIN_OPTIONS}
    model_overrides = {k: v for k, v in overrides.items() if k in MODEL_OPTIONS}
    registered = get_config(model)
    if saved is not None and saved.model.name != registered.name:
        raise UserError(f"experiment {os.path.basename(exp_dir)!r} was trained with model {saved.model.name!r}, "
                        f"not {registered.name!r}; use another --id or --model {saved.model.name}")
    data_dir = data or (saved.data.dir if saved else None)
    if not data_dir:
        raise UserError("--data is required for a new experiment (a folder written by `cli.py preprocess`)")
    metadata = schema.load_metadata(data_dir)
    num_classes = int(metadata["num_classes"])
    schema.split_files(data_dir, metadata, "train")
    if saved is None:
        train = _fine_tuning(recipe_for(registered.family), train_overrides).with_seed()
    else:
        if train_overrides.get("init_from") and train_overrides["init_from"] != saved.train.init_from:
            raise UserError(f"--init-from starts a new experiment; {os.path.basename(exp_dir)!r} exists already "
                            f"(choose a new --id)")
        if "freeze" in given(train_overrides) and (train_overrides["freeze"] or None) != saved.train.freeze:
            raise UserError(f"experiment {os.path.basename(exp_dir)!r} trains with --freeze "
                            f"{saved.train.freeze or '(nothing)'}; what is frozen cannot change on resume (the "
                            f"optimizer holds state for exactly the trained weights): start a new --id with "
                            f"--init-from {os.path.basename(exp_dir)}")
        train = saved.train.replace(**train_overrides).with_seed()
    if saved is not None:
        if saved.model.num_classes != num_classes:
            raise UserError(f"model of experiment {os.path.basename(exp_dir)!r} has {saved.model.num_classes} "
                            f"classes but the data in {data_dir!r} has {num_classes}; use the data it was trained on")
        model_config = saved.model.replace(**model_overrides)
    else:
        model_config = registered.replace(num_classes=num_classes, seed=train.seed % 2 ** 31, **model_overrides,
                                          **training_normalization(registered, metadata, data_dir))
    parse_freeze(train.freeze, model_config)
    return ExperimentConfig(model_config, train, experiment.dataset_config(data_dir, metadata))


def _fine_tuning(recipe: TrainConfig, overrides: Dict) -> TrainConfig:
    """The recipe with `overrides`; with --init-from, what the user left unset follows FINE_TUNING (a tenth of
    the learning rate, cosine, 5% warm-up)."""
    if not overrides.get("init_from"):
        return recipe.replace(**overrides)
    tuned = recipe.replace(learning_rate=recipe.learning_rate * FINE_TUNING["learning_rate_factor"],
                           schedule=FINE_TUNING["schedule"]).replace(**overrides)
    if overrides.get("warmup_steps") is None:
        tuned = tuned.replace(warmup_steps=int(round(FINE_TUNING["warmup_fraction"] * tuned.steps)))
    return tuned


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
    """Train (or resume) experiment WORKDIR/ID; returns a summary dict. `overrides` are the flags given on the
    command line (TrainConfig fields and the ModelConfig options mode, compute_dtype, bn_momentum); on resume
    they override the saved config. `data_service` ("grpc://HOST:PORT") reads training batches from a
    tf.data service instead of decoding locally; if no batch arrives for `data_service_timeout` seconds the
    process saves a checkpoint and exits with code 1 (the blocked TensorFlow call cannot be interrupted
    otherwise)."""
    with watch_sigterm() as preemption:  # SIGTERM during start-up stops at once; in the loop it saves first
        workdir = workdir or DEFAULT_WORKDIR
        if data_service:
            data_service = service.service_target(data_service)
            service.wait_until_reachable(data_service, timeout_seconds=min(30.0, data_service_timeout))
        placement = make_placement(gpus, cpu_replicas)
        announce_id = id is None
        if id is None:
            if placement.num_workers > 1:
                raise UserError("--id is required when TF_CONFIG names several workers (they must share one "
                                "experiment)")
            id = new_experiment_id(get_config(model).name)
        exp_dir = experiment.experiment_dir(workdir, id)
        config = resolve_experiment(model, data, exp_dir, experiment.read_config(exp_dir), overrides)
        replicas = placement.strategy.num_replicas_in_sync
        if config.train.batch_size % replicas:
            raise UserError(f"--batch-size {config.train.batch_size} must be divisible by the {replicas} replicas")
        if announce_id:
            print(f"experiment id: {id}", file=sys.stderr)
        if placement.is_chief:
            os.makedirs(exp_dir, exist_ok=True)
            experiment.save_config(exp_dir, config)
        with _train_log(exp_dir, placement.is_chief):
            return TrainingRun(config, exp_dir, id, placement, preemption, data_service, data_service_timeout,
                               progress).run()


class TrainingRun:
    """One training run of a resolved experiment, as named steps (see `run`)."""

    def __init__(self, config: ExperimentConfig, exp_dir: str, exp_id: str, placement, preemption: Preemption,
                 data_service: Optional[str], data_service_timeout: float, progress_enabled: Optional[bool]):
        self.config, self.exp_dir, self.exp_id, self.placement = config, exp_dir, exp_id, placement
        self.preemption, self.data_service, self.data_service_timeout = preemption, data_service, data_service_timeout
        self.progress_enabled = progress_enabled
        self.train, self.strategy = config.train, placement.strategy
        self.metadata = schema.load_metadata(config.data.dir)
        self.learning_rate = learning_rate_fn(self.train)

    def run(self) -> Dict:
        self._announce()
        self._create_state()
        restored = self._restore_or_start()
        train_steps = self._compiled_steps()
        status, last_eval = self._step_loop(train_steps)
        return self._summary(status, restored, last_eval)

    # --- the steps --------------------------------------------------------------------------------------
    def _announce(self) -> None:
        train, model = self.train, self.config.model
        log.info("experiment %s: %s, %s, global batch %d, %d steps%s%s%s%s", self.exp_id, model.name,
                 self.placement.description, train.batch_size, train.steps,
                 f", {train.steps_per_call} steps per call" if train.steps_per_call > 1 else "",
                 ", XLA (--jit)" if train.jit else "",
                 f", compute in {model.compute_dtype}" if model.compute_dtype else "",
                 f", input from the tf.data service {self.data_service}" if self.data_service else "")
        warning = jit_warning(train, model)
        if warning:
            log.warning("%s", warning)
        if train.freeze:
            log.info("frozen (inference-mode batch norm, not trained): %s",
                     ", ".join(parse_freeze(train.freeze, model)))
            if not train.init_from:
                log.warning("--freeze without --init-from keeps randomly initialised parts fixed")

    def _create_state(self) -> None:
        """The network, the optimizer and the counters, mirrored across replicas, and their checkpoint."""
        with self.strategy.scope():
            self.model = build_model(self.config.model)
            self.model.freeze(parse_freeze(self.train.freeze, self.config.model))
            loss_scale = DynamicLossScale() if self.config.model.compute_dtype == "float16" else None
            self.optimizer = MomentumSGD(self.model.trained_variables, self.train.momentum,
                                         self.train.weight_decay, self.model.decay_variables, loss_scale)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position",
                                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.checkpoint = experiment.training_checkpoint(self.model, self.optimizer, self.step, self.position)

    def _restore_or_start(self) -> Optional[str]:
        """Resume from the newest readable checkpoint (or start at step 0); set up the checkpoint manager."""
        ckpt_dir = experiment.checkpoints_dir(self.exp_dir)
        if self.placement.is_chief:
            for path in experiment.clean_interrupted_saves(ckpt_dir):
                log.warning("removed %s, left by a checkpoint save that was interrupted", path)
        restored = experiment.resume_newest(ckpt_dir, self.model, self.optimizer, self.step, self.position,
                                            self.placement.is_chief)
        if restored is None and self.train.init_from:
            self._init_weights()
        if not self.placement.is_chief:  # other workers join the collective save but write to a scratch folder
            ckpt_dir = os.path.join(self.exp_dir, "workers", f"worker-{self.placement.worker_index}")
        self.ckpt_dir = ckpt_dir
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir, max_to_keep=self.train.keep_checkpoints,
                                                  step_counter=self.step, checkpoint_name="ckpt")
        self.start_step = int(self.step.numpy())
        return restored

    def _init_weights(self) -> None:
        """--init-from at the start of a new experiment: load what fits, report it beside the config."""
        from revnet.train.init_from import REPORT_FILE, format_report, init_from

        report = init_from(self.model, self.train.init_from, os.path.dirname(self.exp_dir),
                           self.train.init_skip_mismatched)
        log.info("%s", format_report(report))
        if self.placement.is_chief:
            atomic_write_json(os.path.join(self.exp_dir, REPORT_FILE), report)

    def _compiled_steps(self):
        """The distributed input (resuming at the saved data position) and the compiled training step."""
        train, model_config, data_dir = self.train, self.config.model, self.config.data.dir
        start_step, position = self.start_step, int(self.position.numpy())

        def dataset_fn(context: tf.distribute.InputContext):
            return input_pipeline.train_dataset(
                data_dir, self.metadata, augmentation=train.augmentation, image_size=model_config.input_size,
                batch_size=context.get_per_replica_batch_size(train.batch_size), seed=train.seed, position=position,
                num_input_pipelines=context.num_input_pipelines, input_pipeline_id=context.input_pipeline_id,
                data_service=self.data_service,
                job_name=f"{self.exp_id}-from-step-{start_step}" if context.num_input_pipelines > 1 else None)

        self.iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        return make_train_step(self.model, self.optimizer, self.strategy, train.batch_size, self.step, self.position,
                               self.learning_rate, steps_per_call=train.steps_per_call, jit=train.jit,
                               label_smoothing=train.label_smoothing, variables=self.model.trained_variables)

    def _step_loop(self, train_steps):
        """Run calls of up to steps_per_call steps until the last step, SIGTERM or a failure."""
        train, placement = self.train, self.placement
        evaluator = _InTrainingEval(self.config, self.metadata, placement) if train.eval_every else None
        writer = tf.summary.create_file_writer(os.path.join(self.exp_dir, "tensorboard", "train")) \
            if placement.is_chief else tf.summary.create_noop_writer()
        self.progress = Progress(train.steps, self.start_step, train.batch_size, train.log_every,
                                 self.progress_enabled)
        # A call of several steps ends at every step where something is due, so these land exactly.
        every = [train.log_every, train.checkpoint_every] + ([train.eval_every] if evaluator else [])
        watchdog = service.StallWatchdog(self.data_service, self.data_service_timeout, self._stalled) \
            if self.data_service else None
        status, last_eval, current = "completed", None, self.start_step
        self.preemption.training_started()
        with writer.as_default():
            while current < train.steps:
                count = min([train.steps_per_call, train.steps - current] + [n - current % n for n in every])
                loss, accuracy, finite = self._call(train_steps, count, watchdog if current > self.start_step else None)
                previous, current = current, current + count
                self._check_finite(loss, finite, previous, current, count)
                self._log_step(current, loss, accuracy)
                if evaluator and (current % train.eval_every == 0 or current == train.steps):
                    last_eval = evaluator(self.model, current)
                if current % train.checkpoint_every == 0 and current < train.steps:
                    self._save("periodic")
                if self.preemption.requested:
                    self.progress.close()
                    self._save("SIGTERM")
                    status = "preempted"
                    break
            self.progress.close()
            if watchdog:
                watchdog.close()
            latest = self.manager.latest_checkpoint
            if status == "completed" and (latest is None or not latest.endswith(f"ckpt-{current}")):
                self._save("final")
        writer.flush()
        return status, last_eval

    def _summary(self, status: str, restored: Optional[str], last_eval: Optional[Dict]) -> Dict:
        summary = {"id": self.exp_id, "experiment_dir": os.path.abspath(self.exp_dir), "status": status,
                   "model": self.config.model.name, "start_step": self.start_step, "step": int(self.step.numpy()),
                   "data_position": int(self.position.numpy()), "replicas": self.strategy.num_replicas_in_sync,
                   "global_batch_size": self.train.batch_size, "last_loss": self.progress.last_loss,
                   "last_accuracy": self.progress.last_accuracy,
                   "examples_per_second": self.progress.examples_per_second(),
                   "checkpoint": self.manager.latest_checkpoint}
        if restored is not None:
            summary["resumed_from"] = restored
        if last_eval is not None:
            summary["validation"] = last_eval
        log.info("finished: %s at step %d", status, summary["step"])
        return summary

    # --- what a step does besides training --------------------------------------------------------------
    def _call(self, train_steps, count: int, watchdog):
        try:
            with watchdog.call() if watchdog else contextlib.nullcontext():
                loss, accuracy, finite = train_steps(self.iterator, tf.constant(count))
        except (tf.errors.DataLossError, tf.errors.UnavailableError) as error:
            self.progress.close()
            raise _input_failure(error, self.config, self.metadata, self.data_service, self._save,
                                 int(self.step.numpy())) from None
        except tf.errors.InvalidArgumentError as error:
            if self.train.jit and int(self.step.numpy()) == self.start_step:
                raise UserError(f"--jit: XLA could not compile the training step of {self.config.model.name} "
                                f"({error_reason(error)}); train without --jit") from None
            raise
        return float(loss), float(accuracy), bool(finite)

    def _check_finite(self, loss: float, finite: bool, previous: int, current: int, count: int) -> None:
        if finite:
            return
        self.progress.close()
        where = f"step {current}" if count == 1 else f"steps {previous + 1}-{current}"
        raise FloatingPointError(
            f"loss became {loss if not math.isfinite(loss) else 'non-finite'} at {where}; training stopped and the "
            f"last good checkpoint {self.manager.latest_checkpoint or '(none yet)'} was kept; lower --lr or check "
            f"the data")

    def _log_step(self, current: int, loss: float, accuracy: float) -> None:
        line = self.progress.update(current, loss, accuracy)
        if line is None:
            return
        summaries.scalar("loss", loss, step=current)
        summaries.scalar("accuracy", accuracy, step=current)
        summaries.scalar("learning_rate", float(self.learning_rate(current - 1)), step=current)
        summaries.scalar("examples_per_second", line["examples_per_second"], step=current)
        memory = _memory_peak_bytes(self.placement.memory_device)
        if memory is not None:
            summaries.scalar("memory_peak_bytes", memory, step=current)

    def _save(self, reason: str) -> str:
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_variables):
            raise FloatingPointError(f"weights became non-finite by step {int(self.step.numpy())}; not saving; the "
                                     f"last good checkpoint {self.manager.latest_checkpoint or '(none yet)'} was kept")
        path = self.manager.save(checkpoint_number=self.step)
        if not self.placement.is_chief:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        log.info("saved checkpoint %s (%s)", path, reason)
        return path

    def _stalled(self, seconds: float) -> None:
        """Watchdog thread: the main thread is stuck inside TensorFlow, so save from here and exit."""
        try:
            kept = f"progress up to step {int(self.step.numpy())} is saved in {self._save('tf.data service stalled')}"
        except Exception as error:  # noqa: BLE001 - the exit below must happen whatever the save does
            kept = f"no checkpoint could be saved ({error})"
        log.error("no training batch from the tf.data service %s for %.0f s (TensorFlow waits for a worker that "
                  "died mid-epoch until it returns at the same address); %s; restart the workers and resume with "
                  "--id %s", self.data_service, seconds, kept, self.exp_id)
        logging.shutdown()
        os._exit(1)


def jit_warning(train_cfg: TrainConfig, model_config: ModelConfig) -> Optional[str]:
    """The warning --jit deserves for this model, if any. Under XLA the reversible loops are unrolled (inside
    while loops XLA compiled the convolution backprops with its slow generic emitter, 15-30x slower); unrolled,
    `benchmark train` measured 0.72x the speed of no --jit on CPU, and XLA's buffer assignment then keeps
    activation memory growing with depth (605 MB against 95 MB without --jit at 19 units per stage)."""
    if train_cfg.jit and model_config.architecture == "revnet" and model_config.mode == "reversible":
        return ("--jit with the reversible stack: XLA runs it unrolled, which on CPU measured 0.72x the speed of no "
                "--jit, and its activation memory then grows with depth as autodiff's does (docs/benchmarks.md, "
                "Training throughput); without --jit the memory stays flat")
    return None


def _input_failure(error, config: ExperimentConfig, metadata: Dict, data_service: Optional[str], save,
                   at_step: int) -> Exception:
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
    damaged = input_pipeline.find_damaged_shard(config.data.dir, metadata, "train")
    if damaged is None:
        return UserError(f"reading the training data in {config.data.dir} failed ({error_reason(error)}), "
                         f"but every shard reads in full now{kept}")
    return UserError(f"training shard {damaged[0]} is damaged ({damaged[1]}){kept}; re-create the dataset with "
                     f"`cli.py preprocess ... --overwrite`")


class _InTrainingEval:
    """--eval-every: copy the weights into a plain model and evaluate the full validation split."""

    def __init__(self, config: ExperimentConfig, metadata: Dict, placement):
        self.placement = placement
        self.model = build_model(config.model)
        self.eval_step = make_eval_step(self.model)
        self.dataset = input_pipeline.eval_dataset(
            config.data.dir, metadata, "validation", preprocessing=self.model.config.preprocessing,
            image_size=self.model.config.input_size, batch_size=config.train.eval_batch_size)

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
