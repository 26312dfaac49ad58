"""`evaluate`: the separate evaluator. It watches an experiment's checkpoints, evaluates each new
one on the full split, appends eval.jsonl, writes TensorBoard, keeps a copy of the best checkpoint
in WORKDIR/ID/best/ and stops after the trainer's final step (or `--once` after the latest)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Dict, List, Optional

import tensorflow as tf

from revnet.common.errors import UserError, error_reason
from revnet.common.fileio import atomic_write_bytes, atomic_write_json, read_json
from revnet.models import build_model
from revnet.preprocess import input_pipeline, schema
from revnet.train import experiment, summaries
from revnet.train.train_config import ExperimentConfig
from revnet.train.steps import make_eval_step, run_evaluation

log = logging.getLogger(__name__)

EVAL_FILE = "eval.jsonl"
BEST_FILE = "best.json"


def read_eval_log(exp_dir: str) -> List[Dict]:
    path = os.path.join(exp_dir, EVAL_FILE)
    if not os.path.exists(path):
        return []
    with open(path, "r", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _append_eval_log(exp_dir: str, record: Dict) -> None:
    """Rewrite eval.jsonl with one more line, atomically (readers never see a torn line)."""
    lines = [json.dumps(r, sort_keys=True) for r in read_eval_log(exp_dir)] + [json.dumps(record, sort_keys=True)]
    atomic_write_bytes(os.path.join(exp_dir, EVAL_FILE), ("\n".join(lines) + "\n").encode("utf-8"))


def _copy_best(exp_dir: str, checkpoint_path: str, record: Dict) -> None:
    """Copy ckpt-N.index/.data-* into best/ (each file via temp + rename), then point best/checkpoint at it."""
    best = experiment.best_dir(exp_dir)
    os.makedirs(best, exist_ok=True)
    prefix = os.path.basename(checkpoint_path)
    source_dir = os.path.dirname(checkpoint_path)
    for name in os.listdir(source_dir):
        if name.startswith(prefix + "."):
            temporary = os.path.join(best, ".tmp-" + name)
            shutil.copyfile(os.path.join(source_dir, name), temporary)
            os.replace(temporary, os.path.join(best, name))
    # The same text-proto state file CheckpointManager writes, so tf.train.latest_checkpoint(best/) finds it.
    state = f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n'
    atomic_write_bytes(os.path.join(best, "checkpoint"), state.encode("utf-8"))
    for name in os.listdir(best):
        if name.startswith("ckpt-") and not name.startswith(prefix + "."):
            os.unlink(os.path.join(best, name))
    atomic_write_json(os.path.join(best, BEST_FILE), dict(record, checkpoint=prefix))


class _Evaluator:
    def __init__(self, exp_dir: str, config: ExperimentConfig, split: str, batch_size: Optional[int]):
        self.exp_dir, self.config, self.split = exp_dir, config, split
        data_dir = config.data.dir
        if not data_dir:  # an experiment imported without --data
            raise UserError(f"experiment {exp_dir!r} records no dataset to evaluate on; import it with --data DIR")
        metadata = schema.load_metadata(data_dir)
        if split not in metadata["splits"]:
            raise UserError(f"dataset {data_dir!r} has no split {split!r}; it has: {', '.join(metadata['splits'])}")
        self.expected = input_pipeline.split_size(metadata, split)
        self.model = build_model(config.model)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=self.model, step=self.step)
        self.eval_step = make_eval_step(self.model)
        self.dataset = input_pipeline.eval_dataset(
            data_dir, metadata, split, preprocessing=self.model.config.preprocessing,
            image_size=self.model.config.input_size, batch_size=batch_size or config.train.eval_batch_size)
        self.writer = tf.summary.create_file_writer(os.path.join(exp_dir, "tensorboard", f"eval_{split}"))

    def __call__(self, checkpoint_path: str) -> Dict:
        experiment.restore_checkpoint(self.checkpoint, checkpoint_path).expect_partial()
        started = time.perf_counter()
        try:
            result = run_evaluation(self.eval_step, self.dataset)
        except tf.errors.DataLossError as error:
            data_dir = self.config.data.dir
            damaged = input_pipeline.find_damaged_shard(data_dir, schema.load_metadata(data_dir), self.split)
            where = f"shard {damaged[0]} is damaged ({damaged[1]})" if damaged else \
                f"reading {data_dir} failed ({error_reason(error)})"
            raise UserError(f"{self.split} {where}; re-create the dataset with `cli.py preprocess ... --overwrite`") \
                from None
        if result["examples"] != self.expected:
            raise RuntimeError(f"evaluated {result['examples']} examples but metadata.json lists {self.expected} "
                               f"in split {self.split!r}")
        step = int(self.step.numpy())
        record = dict(result, step=step, split=self.split, checkpoint=os.path.basename(checkpoint_path),
                      eval_seconds=round(time.perf_counter() - started, 3), time=time.time())
        with self.writer.as_default():
            for key in ("top1", "top5", "loss"):
                summaries.scalar(key, result[key], step=step)
        self.writer.flush()
        _append_eval_log(self.exp_dir, record)
        best_path = os.path.join(experiment.best_dir(self.exp_dir), BEST_FILE)
        best = read_json(best_path) if os.path.exists(best_path) else None
        if self.split == "validation" and (best is None or record["top1"] > best["top1"]):
            _copy_best(self.exp_dir, checkpoint_path, record)
            record["best"] = True
        log.info("%s at step %d: top1=%.4f top5=%.4f loss=%.4f (%d examples)", self.split, step, result["top1"],
                 result["top5"], result["loss"], result["examples"])
        return record


def evaluate(id: str, workdir: Optional[str] = None, once: bool = False, split: str = "validation",
             batch_size: Optional[int] = None, timeout_seconds: float = 3600.0,
             poll_seconds: float = 5.0) -> Dict:
    """Evaluate experiment WORKDIR/ID; returns the last evaluation record (None if nothing was evaluated)."""
    if split not in schema.SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of: {', '.join(schema.SPLITS)}")
    exp_dir, config = experiment.load_config(workdir, id)
    evaluator = _Evaluator(exp_dir, config, split, batch_size)
    if once:
        return evaluator(experiment.resolve_checkpoint(exp_dir, "latest"))
    done = {r["checkpoint"] for r in read_eval_log(exp_dir) if r.get("split") == split}
    last = None
    for path in tf.train.checkpoints_iterator(experiment.checkpoints_dir(exp_dir), min_interval_secs=poll_seconds,
                                              timeout=timeout_seconds):
        final_step = experiment.load_config(workdir, id)[1].train.steps  # a resume may extend the run
        if os.path.basename(path) not in done:
            try:
                last = evaluator(path)
            except experiment.UnreadableCheckpoint as error:
                # The trainer's CheckpointManager may delete an old checkpoint before we read it.
                log.warning("skipped %s", error)
                continue
            done.add(os.path.basename(path))
        step = int(path.rsplit("-", 1)[-1]) if path.rsplit("-", 1)[-1].isdigit() else -1
        if step >= final_step:
            log.info("reached the final step %d; evaluator stops", final_step)
            break
    else:
        log.info("no new checkpoint for %.0f s; evaluator stops", timeout_seconds)
    return last
