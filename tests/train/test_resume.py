"""Preemption and crash recovery with the real CLI in a subprocess: SIGKILL loses at most the steps since
the last checkpoint, SIGTERM saves before exiting, and a rerun with the same --id continues the step
counter, the optimizer state and the data position."""
import os
import re
import signal
import subprocess
import time

import pytest
import tensorflow as tf

from testkit.trainer_testing import cli_command, subprocess_env

pytestmark = pytest.mark.slow  # real subprocesses; `-m "not slow"` skips them

BATCH = 8


def _latest_step(checkpoints_dir):
    path = tf.train.latest_checkpoint(checkpoints_dir)
    return int(path.rsplit("-", 1)[1]) if path else 0


def _wait_for(predicate, process, timeout_seconds=240):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, f"trainer exited early with {process.returncode}"
        time.sleep(0.2)
    process.kill()
    raise AssertionError("timed out waiting for the trainer")


def _after_resume(train_log):
    text = open(train_log).read() if os.path.exists(train_log) else ""
    marker = text.rfind("resumed from ")
    return text[marker:] if marker >= 0 else ""


def _start(toy_data, workdir, checkpoint_every, log_path):
    args = cli_command("train", "--model", "resnet-32", "--data", toy_data, "--id", "kr", "--workdir", workdir,
                       "--steps", "100000", "--batch-size", str(BATCH), "--checkpoint-every", str(checkpoint_every),
                       "--log-every", "1", "--seed", "4")
    return subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))


def test_sigkill_and_sigterm_then_resume_continue_step_optimizer_and_data(toy_data, tmp_path):
    workdir = str(tmp_path / "work")
    checkpoints = os.path.join(workdir, "kr", "checkpoints")
    train_log = os.path.join(workdir, "kr", "train.log")

    # 1. Crash: SIGKILL after a periodic checkpoint; whatever ran after it is lost, nothing more.
    first = _start(toy_data, workdir, 2, tmp_path / "first.log")
    _wait_for(lambda: _latest_step(checkpoints) >= 4, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    killed_at = _latest_step(checkpoints)
    assert killed_at % 2 == 0 and killed_at >= 4

    # 2. Preemption: the rerun resumes from that checkpoint; SIGTERM saves an off-schedule checkpoint.
    second = _start(toy_data, workdir, 1000, tmp_path / "second.log")
    # train.log is appended across runs and the killed run may have logged later steps itself, so only
    # lines after the second run's resume message count.
    _wait_for(lambda: f"step {killed_at + 2}/" in _after_resume(train_log), second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=120) == 143
    log_text = open(train_log).read()
    assert re.search(rf"resumed from .*ckpt-{killed_at} at step {killed_at} \(data position {killed_at * BATCH}\)",
                     log_text)
    preempted_at = _latest_step(checkpoints)
    assert preempted_at >= killed_at + 2 and "(SIGTERM)" in log_text

    # 3. The SIGTERM checkpoint carries on the first run's counters: the optimizer's own update count
    # and the data position match the step (they would restart from 0 if state were not restored).
    final = tf.train.latest_checkpoint(checkpoints)
    assert tf.train.load_variable(final, "step/.ATTRIBUTES/VARIABLE_VALUE") == preempted_at
    assert tf.train.load_variable(final, "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE") == preempted_at
    assert tf.train.load_variable(final, "data_position/.ATTRIBUTES/VARIABLE_VALUE") == preempted_at * BATCH


def test_sigterm_during_start_up_stops_cleanly_without_a_checkpoint(toy_data, tmp_path):
    """SIGTERM before the first step (here: right after the start-up log line, while the model is built and
    traced) ends the run with one line and exit 143, instead of the process dying from the signal."""
    workdir = str(tmp_path / "work")
    log_path = tmp_path / "startup.log"
    process = _start(toy_data, workdir, 2, log_path)
    _wait_for(lambda: "experiment kr:" in log_path.read_text(), process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    stderr = log_path.read_text()
    assert "SIGTERM during start-up" in stderr and "Traceback" not in stderr
    assert _latest_step(os.path.join(workdir, "kr", "checkpoints")) == 0


def test_sigterm_with_several_steps_per_call_saves_at_the_end_of_the_call_in_flight(toy_data, tmp_path):
    workdir = str(tmp_path / "work")
    log_path = tmp_path / "calls.log"
    args = cli_command("train", "--model", "resnet-32", "--data", toy_data, "--id", "spc", "--workdir", workdir,
                       "--steps", "100000", "--batch-size", str(BATCH), "--steps-per-call", "5", "--log-every", "10",
                       "--checkpoint-every", "1000", "--seed", "4")
    process = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
    _wait_for(lambda: "step 20/" in log_path.read_text(), process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    saved = _latest_step(os.path.join(workdir, "spc", "checkpoints"))
    # Calls are 5 steps (log boundaries every 10 are multiples of 5): the save lands on a call boundary.
    assert saved >= 20 and saved % 5 == 0
    logged = [int(step) for step in re.findall(r"step (\d+)/100000", log_path.read_text())]
    assert logged and all(step % 10 == 0 for step in logged)
