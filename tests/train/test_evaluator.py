"""The evaluator: `eval --once` output, eval.jsonl, the best/ copy, full-split counting and the watcher."""
import json
import os
import re
import shutil
import threading
import time

import tensorflow as tf
from click.testing import CliRunner

from revnet.train.evaluator import evaluate
from revnet.train.trainer import run as train_run
from revnet.cli import cli
from revnet.train import experiment


def test_eval_once_prints_top1_top5_loss_and_records_it(finished_experiment):
    workdir, exp_id, _ = finished_experiment
    result = CliRunner().invoke(cli, ["eval", "--id", exp_id, "--workdir", workdir, "--once", "--batch-size", "10"])
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"top1=\d\.\d{4} top5=\d\.\d{4} loss=\d+\.\d{4}\n", result.stdout)
    records = [json.loads(line) for line in open(os.path.join(workdir, exp_id, "eval.jsonl"))]
    last = records[-1]
    assert last["step"] == 4 and last["checkpoint"] == "ckpt-4" and last["split"] == "validation"
    assert last["examples"] == 37          # 10 + 10 + 10 + 7: the partial batch counts, nothing twice
    assert f"top1={last['top1']:.4f}" in result.stdout
    best = experiment.resolve_checkpoint(os.path.join(workdir, exp_id), "best")
    assert os.path.basename(best) == "ckpt-4"
    assert tf.train.load_variable(best, "step/.ATTRIBUTES/VARIABLE_VALUE") == 4


def test_watcher_evaluates_a_checkpoint_written_while_it_watches_and_stops_after_the_final_step(
        finished_experiment, tmp_path):
    workdir, exp_id, _ = finished_experiment
    copy = str(tmp_path / "work")
    shutil.copytree(workdir, copy)
    # As if the run had been stopped at step 4 of 6: the watcher evaluates ckpt-4 and waits for more.
    config_path = os.path.join(copy, exp_id, "config.json")
    config = json.load(open(config_path))
    config["train"]["steps"] = 6
    json.dump(config, open(config_path, "w"))
    eval_log = os.path.join(copy, exp_id, "eval.jsonl")
    errors = []

    def watcher_evaluated_ckpt_4():
        return os.path.exists(eval_log) and any(
            json.loads(line)["split"] == "train" and json.loads(line)["checkpoint"] == "ckpt-4"
            for line in open(eval_log) if line.strip())

    def train_on_once_the_watcher_has_evaluated_ckpt_4():
        try:
            deadline = time.monotonic() + 120
            while not watcher_evaluated_ckpt_4():
                assert time.monotonic() < deadline, "the watcher never evaluated ckpt-4"
                time.sleep(0.1)
            train_run(model="resnet-32", id=exp_id, workdir=copy, checkpoint_every=1000, progress=False)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    trainer = threading.Thread(target=train_on_once_the_watcher_has_evaluated_ckpt_4)
    trainer.start()
    try:
        result = evaluate(id=exp_id, workdir=copy, split="train", timeout_seconds=120, poll_seconds=0.2)
    finally:
        trainer.join()
    assert not errors, errors
    records = [json.loads(line) for line in open(eval_log)]
    assert [(r["checkpoint"], r["step"]) for r in records if r["split"] == "train"] == [("ckpt-4", 4), ("ckpt-6", 6)]
    assert result["step"] == 6 and result["checkpoint"] == "ckpt-6" and result["examples"] == 160
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0


def test_eval_of_a_missing_experiment_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["eval", "--id", "nope", "--workdir", str(tmp_path), "--once"])
    assert result.exit_code == 2
    assert result.output.startswith("error: no experiment 'nope'") and result.output.count("\n") == 1


def test_train_cli_bad_input_exits_2_without_traceback(toy_data, tmp_path):
    for args, message in [(["--model", "revnet-999", "--data", toy_data], "unknown model"),
                          (["--model", "revnet-38", "--data", str(tmp_path)], "has no metadata.json"),
                          (["--model", "revnet-38", "--data", toy_data, "--gpus", "4"], "--gpus 4 asks for more GPUs")]:
        result = CliRunner().invoke(cli, ["train", "--workdir", str(tmp_path), *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and message in result.output
        assert "Traceback" not in result.output
