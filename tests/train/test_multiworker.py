"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train one experiment together."""
import json
import os
import subprocess

import pytest
import tensorflow as tf

from testkit.trainer_testing import cli_command, free_port, subprocess_env

pytestmark = pytest.mark.slow  # real subprocesses; `-m "not slow"` skips them


def test_two_workers_train_one_experiment(toy_data, tmp_path):
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    workdir = str(tmp_path)
    processes = []
    for index in range(2):
        env = subprocess_env()
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        args = cli_command("train", "--model", "resnet-32", "--data", toy_data, "--id", "mw", "--workdir", workdir,
                           "--steps", "2", "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1",
                           "--seed", "1", "--json")
        log = open(tmp_path / f"w{index}.log", "w")
        processes.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log, text=True))
    outputs = []
    for process in processes:
        try:
            stdout, _ = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise
        outputs.append(stdout)
    for index, process in enumerate(processes):
        assert process.returncode == 0, open(tmp_path / f"w{index}.log").read()[-2000:]
    chief = json.loads(outputs[0])
    assert chief["replicas"] == 2 and chief["step"] == 2 and chief["data_position"] == 16
    checkpoints = os.path.join(workdir, "mw", "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-2")
    assert not os.path.exists(os.path.join(workdir, "mw", "workers", "worker-1"))   # scratch copy removed
    assert "MultiWorkerMirroredStrategy over 2 workers" in open(os.path.join(workdir, "mw", "train.log")).read()
