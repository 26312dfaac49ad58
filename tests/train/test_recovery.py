"""Resume never silently starts over, and damaged files are named: a checkpoint list naming a missing
checkpoint, a checkpoint without its .index or with damaged data falls back to the newest readable one
with a warning; none readable is a UserError; interrupted saves are cleaned; create_experiment's step-0
checkpoint, and an older one without optimizer state, are fine-tuned from; a damaged shard or checkpoint
exits 2 naming the file."""
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from revnet.cli import cli
from revnet.common.errors import UserError
from revnet.train.trainer import run as train_run


@pytest.fixture
def experiment_copy(finished_experiment, tmp_path):
    """A private copy of the finished 4-step experiment (checkpoints ckpt-2 and ckpt-4)."""
    workdir, exp_id, _ = finished_experiment
    copy = str(tmp_path / "work")
    shutil.copytree(workdir, copy)
    return copy, exp_id, os.path.join(copy, exp_id, "checkpoints")


def _resume(workdir, exp_id, steps=6):
    return train_run(model="resnet-32", id=exp_id, workdir=workdir, steps=steps, checkpoint_every=1000,
                     progress=False)


def _warnings(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_missing_index_of_the_latest_checkpoint_falls_back_with_a_warning(experiment_copy, caplog):
    workdir, exp_id, checkpoints = experiment_copy
    os.unlink(os.path.join(checkpoints, "ckpt-4.index"))
    with caplog.at_level(logging.WARNING):
        summary = _resume(workdir, exp_id)
    assert summary["start_step"] == 2 and summary["resumed_from"].endswith("ckpt-2") and summary["step"] == 6
    assert f"{os.path.join(checkpoints, 'ckpt-4')} is named in" in _warnings(caplog)
    assert "resumed from" in _warnings(caplog) and "ckpt-2, the newest readable checkpoint" in _warnings(caplog)


def test_a_state_file_naming_a_checkpoint_that_does_not_exist_falls_back(experiment_copy, caplog):
    workdir, exp_id, checkpoints = experiment_copy
    state = os.path.join(checkpoints, "checkpoint")
    text = open(state).read().replace('model_checkpoint_path: "ckpt-4"', 'model_checkpoint_path: "ckpt-8"')
    open(state, "w").write(text + 'all_model_checkpoint_paths: "ckpt-8"\n')
    with caplog.at_level(logging.WARNING):
        summary = _resume(workdir, exp_id)
    assert summary["start_step"] == 4 and summary["step"] == 6
    assert "ckpt-8 is named in" in _warnings(caplog)
    # The list was rewritten: CheckpointManager now names only real checkpoints.
    assert tf.train.get_checkpoint_state(checkpoints).model_checkpoint_path.endswith("ckpt-6")


def test_damaged_checkpoint_data_falls_back_to_the_older_one(experiment_copy, caplog):
    workdir, exp_id, checkpoints = experiment_copy
    data = next(os.path.join(checkpoints, n) for n in os.listdir(checkpoints) if n.startswith("ckpt-4.data"))
    open(data, "r+b").truncate(os.path.getsize(data) // 2)
    with caplog.at_level(logging.WARNING):
        summary = _resume(workdir, exp_id)
    assert summary["start_step"] == 2
    assert f"checkpoint {os.path.join(checkpoints, 'ckpt-4')} is unreadable" in _warnings(caplog)


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(experiment_copy):
    workdir, exp_id, checkpoints = experiment_copy
    for name in ("ckpt-2.index", "ckpt-4.index"):
        os.unlink(os.path.join(checkpoints, name))
    before = sorted(os.listdir(checkpoints))
    result = CliRunner().invoke(cli, ["train", "--model", "resnet-32", "--id", exp_id, "--workdir", workdir])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: no readable checkpoint in {checkpoints}")
    assert "refusing to start again at step 0" in result.output
    assert sorted(os.listdir(checkpoints)) == before     # nothing written next to the orphans


def test_interrupted_saves_are_cleaned_on_the_next_run(experiment_copy, caplog):
    workdir, exp_id, checkpoints = experiment_copy
    staging = os.path.join(checkpoints, "ckpt-5_temp")
    os.makedirs(staging)
    open(os.path.join(staging, "part-00000-of-00001.index"), "wb").write(b"half")
    open(os.path.join(checkpoints, "checkpoint.tmp0123abcd"), "w").write("half")
    keep = os.path.join(checkpoints, "notes.txt")
    open(keep, "w").write("not ours")
    with caplog.at_level(logging.WARNING):
        summary = _resume(workdir, exp_id)
    assert summary["start_step"] == 4
    assert not os.path.exists(staging) and not os.path.exists(os.path.join(checkpoints, "checkpoint.tmp0123abcd"))
    assert os.path.exists(keep)
    assert f"removed {staging}" in _warnings(caplog)


@pytest.mark.parametrize("without_optimizer", [False, True])
def test_train_id_fine_tunes_a_create_experiment_folder(toy_data, tmp_path, caplog, without_optimizer):
    from revnet.models import build_model
    from revnet.train.train_config import DataConfig
    from revnet.train.experiment import checkpoints_dir, create_experiment

    workdir = str(tmp_path)
    start = build_model("resnet-32", num_classes=4, seed=11)
    exp_dir = create_experiment(workdir, "ft", start, DataConfig(dir=toy_data))
    if without_optimizer:   # the layout older versions of create_experiment wrote: model and step only
        shutil.rmtree(checkpoints_dir(exp_dir))
        step = tf.Variable(0, dtype=tf.int64)
        tf.train.CheckpointManager(tf.train.Checkpoint(model=start, step=step), checkpoints_dir(exp_dir),
                                   max_to_keep=None, checkpoint_name="ckpt").save(checkpoint_number=0)
    with caplog.at_level(logging.INFO):
        summary = train_run(model="resnet-32", id="ft", workdir=workdir, steps=2, batch_size=8, learning_rate=1e-5,
                            seed=99, progress=False)
    assert summary["status"] == "completed" and summary["start_step"] == 0 and summary["step"] == 2
    expected = "fine-tuning from the weights in" if without_optimizer else "ckpt-0 at step 0 (data position 0)"
    assert expected in caplog.text
    trained = tf.train.load_checkpoint(summary["checkpoint"])
    name = "model/stem/params/conv.Skernel/.ATTRIBUTES/VARIABLE_VALUE"   # a "/" in a key is saved as ".S"
    kernel = next(v for v in start.trainable_variables if "stem" in v.name and "kernel" in v.name).numpy()
    other_seed = next(v for v in build_model("resnet-32", num_classes=4, seed=99).trainable_variables
                      if "stem" in v.name and "kernel" in v.name).numpy()
    np.testing.assert_allclose(trained.get_tensor(name), kernel, atol=1e-3)   # two tiny steps from ITS weights
    assert not np.allclose(trained.get_tensor(name), other_seed, atol=1e-2)


def test_a_float32_run_continues_in_fp16_with_a_fresh_loss_scale(experiment_copy, caplog):
    """A checkpoint without a loss scale (float32 run, imported weights) still restores everything else
    under --mixed-precision fp16; the restore asserts every other object matched (momentum included)."""
    workdir, exp_id, ckpt_dir = experiment_copy
    with caplog.at_level(logging.INFO):
        summary = train_run(model="resnet-32", id=exp_id, workdir=workdir, steps=5, compute_dtype="fp16",
                            checkpoint_every=1000, progress=False)
    assert summary["status"] == "completed" and summary["start_step"] == 4 and summary["step"] == 5
    assert "ckpt-4 holds no float16 loss scale" in caplog.text
    saved = tf.train.load_checkpoint(summary["checkpoint"])
    assert saved.get_tensor("optimizer/loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE") == 2.0 ** 15
    velocity = next(name for name in saved.get_variable_to_shape_map() if name.startswith("optimizer/velocities/"))
    assert np.any(saved.get_tensor(velocity) != 0)


def _corrupt_middle(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_damaged_training_shard_exits_2_naming_it(toy_data, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(toy_data, data)
    shard = os.path.join(data, sorted(n for n in os.listdir(data) if n.startswith("train-"))[1])
    _corrupt_middle(shard)
    result = CliRunner().invoke(cli, ["train", "--model", "resnet-32", "--data", data, "--id", "bad", "--workdir",
                                      str(tmp_path / "work"), "--steps", "40", "--batch-size", "8", "--seed", "1"])
    assert result.exit_code == 2, result.output
    assert f"error: training shard {shard} is damaged (" in result.output
    assert "Traceback" not in result.output


def test_a_damaged_validation_shard_or_checkpoint_exits_2_naming_it(experiment_copy, tmp_path):
    workdir, exp_id, checkpoints = experiment_copy
    import json

    config_path = os.path.join(workdir, exp_id, "config.json")
    config = json.load(open(config_path))
    data = str(tmp_path / "data")
    shutil.copytree(config["data"]["dir"], data)
    config["data"]["dir"] = data
    json.dump(config, open(config_path, "w"))
    shard = os.path.join(data, sorted(n for n in os.listdir(data) if n.startswith("validation-"))[0])
    _corrupt_middle(shard)
    args = ["eval", "--id", exp_id, "--workdir", workdir, "--once"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and f"error: validation shard {shard} is damaged (" in result.output, result.output
    data_file = next(os.path.join(checkpoints, n) for n in os.listdir(checkpoints) if n.startswith("ckpt-4.data"))
    open(data_file, "r+b").truncate(10)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: checkpoint {os.path.join(checkpoints, 'ckpt-4')} is unreadable")


def test_restore_model_names_a_damaged_checkpoint(experiment_copy):
    from revnet.train.experiment import restore_model

    workdir, exp_id, checkpoints = experiment_copy
    open(os.path.join(checkpoints, "ckpt-4.index"), "r+b").truncate(7)
    with pytest.raises(UserError, match=r"checkpoint .*ckpt-4 is unreadable"):
        restore_model(workdir, exp_id)
