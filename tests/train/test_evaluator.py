"""The evaluator: `eval --once` output, eval.jsonl, the best/ copy, full-split counting and the watcher."""
import json
import os
import re

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


def test_watcher_evaluates_new_checkpoints_and_stops_after_the_final_step(finished_experiment):
    workdir, exp_id, _ = finished_experiment
    result = evaluate(id=exp_id, workdir=workdir, split="train", timeout_seconds=60, poll_seconds=0.1)
    assert result["step"] == 4 and result["split"] == "train" and result["examples"] == 160
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
        assert result.output.startswith(f"error: ") and message in result.output
        assert "Traceback" not in result.output
