"""The trainer end to end on tiny TFRecords: every CIFAR model, learning, replica equivalence, NaN
handling, experiment folder contents and the one-line errors for bad input."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from revnet.train.evaluator import evaluate
from revnet.train.trainer import run as train_run
from revnet.common.errors import UserError
from revnet.models import build_model
from revnet.train.distribute import make_placement
from revnet.train.optimizer import MomentumSGD
from revnet.train.steps import make_train_step
from revnet.train.summaries import read_scalars

NSTEPS = 2
CIFAR_MODELS = ["resnet-32", "resnet-110", "resnet-164", "revnet-38", "revnet-110", "revnet-164"]


@pytest.mark.parametrize("model_name", CIFAR_MODELS)
def test_a_few_steps_of_every_cifar_model(model_name, toy_data, tmp_path):
    summary = train_run(model=model_name, data=toy_data, id="run", workdir=str(tmp_path), steps=2, batch_size=8,
                        log_every=1, seed=1, progress=False)
    assert summary["status"] == "completed" and summary["step"] == 2
    assert summary["data_position"] == 16
    assert np.isfinite(summary["last_loss"])
    assert summary["checkpoint"].endswith("ckpt-2")


def test_experiment_folder_holds_config_checkpoints_log_and_summaries(finished_experiment):
    workdir, exp_id, summary = finished_experiment
    exp_dir = os.path.join(workdir, exp_id)
    config = json.load(open(os.path.join(exp_dir, "config.json")))
    assert config["model"]["name"] == "resnet-32" and config["model"]["num_classes"] == 4
    assert config["train"]["batch_size"] == 8 and config["train"]["momentum"] == 0.9
    assert config["train"]["weight_decay"] == 2e-4 and config["data"]["train_examples"] == 160
    assert sorted(f for f in os.listdir(os.path.join(exp_dir, "checkpoints")) if f.endswith(".index")) == \
        ["ckpt-2.index", "ckpt-4.index"]
    log_text = open(os.path.join(exp_dir, "train.log")).read()
    assert "step 4/4" in log_text and "saved checkpoint" in log_text
    scalars = read_scalars(os.path.join(exp_dir, "tensorboard", "train"))
    assert {"loss", "accuracy", "learning_rate", "examples_per_second"} <= set(scalars)
    assert [step for step, _ in scalars["loss"]] == [1, 2, 3, 4]
    assert scalars["learning_rate"][0][1] == pytest.approx(0.1)


def test_loss_goes_down_on_a_learnable_toy_set(toy_data, tmp_path):
    summary = train_run(model="revnet-38", data=toy_data, id="learn", workdir=str(tmp_path), steps=30, batch_size=16,
                        learning_rate=0.05, log_every=1, seed=2, progress=False)
    losses = [value for _, value in read_scalars(os.path.join(summary["experiment_dir"], "tensorboard", "train"))["loss"]]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    assert np.mean(losses[-5:]) < 0.7  # chance level is ln(4) = 1.39


def _train_steps(num_replicas, images, labels, global_batch):
    """NSTEPS train steps of resnet-32 over the given global batches; returns (losses, variables)."""
    placement = make_placement(gpus=0, cpu_replicas=num_replicas)
    strategy = placement.strategy
    with strategy.scope():
        model = build_model("resnet-32", num_classes=4, seed=3)
        optimizer = MomentumSGD(model.trainable_variables, 0.9, 2e-4, model.decay_variables)
        step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        position = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(per_replica)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = make_train_step(model, optimizer, strategy, global_batch, step, position)
    losses = [float(train_step(iterator, tf.constant(0.1))[0]) for _ in range(NSTEPS)]
    return losses, [np.asarray(v.read_value()) for v in model.variables]


def test_two_cpu_replicas_match_one_replica_for_the_same_global_batch():
    # Batch norm is per replica, so each global batch is [x; x]: replica 0 and replica 1 then see the
    # same statistics as the single replica does over [x; x]. What remains to compare is exactly loss
    # scaling (global batch size), cross-replica gradient summation and the moving-statistics sync.
    half = 4
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, size=(half, 32, 32, 3)).astype(np.float32) for _ in range(NSTEPS)]
    batch_labels = [rng.integers(0, 4, size=half).astype(np.int32) for _ in range(NSTEPS)]
    images = np.concatenate([np.concatenate([x, x]) for x in batches])
    labels = np.concatenate([np.concatenate([y, y]) for y in batch_labels])
    losses_one, variables_one = _train_steps(1, images, labels, 2 * half)
    losses_two, variables_two = _train_steps(2, images, labels, 2 * half)
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-4)
    assert len(variables_one) == len(variables_two)
    # Relative error per variable (norm of the difference over the norm): float32 reduction order and
    # oneDNN kernels differ between batch 8 and batch 4, which moves single elements by ~1e-4, while a
    # loss-scaling or aggregation bug moves whole variables by O(1) (betas start at 0).
    for one, two in zip(variables_one, variables_two):
        assert np.linalg.norm(two - one) <= 2e-3 * np.linalg.norm(one) + 1e-6
    assert not np.allclose(variables_one[0], build_model("resnet-32", num_classes=4, seed=3).variables[0].numpy())


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(finished_experiment, tmp_path):
    workdir, exp_id, _ = finished_experiment
    import shutil

    copy = str(tmp_path / "work")
    shutil.copytree(workdir, copy)
    checkpoints = os.path.join(copy, exp_id, "checkpoints")
    before = sorted(os.listdir(checkpoints))
    with pytest.raises(FloatingPointError, match="loss became (nan|inf).*last good checkpoint .*ckpt-4"):
        train_run(model="resnet-32", id=exp_id, workdir=copy, steps=30, learning_rate=1e30, checkpoint_every=1000,
                  progress=False)
    assert sorted(os.listdir(checkpoints)) == before
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-4")


def test_resuming_with_another_model_or_other_data_is_a_user_error(finished_experiment, tmp_path):
    workdir, exp_id, _ = finished_experiment
    with pytest.raises(UserError, match="trained with model 'resnet-32'"):
        train_run(model="revnet-38", id=exp_id, workdir=workdir)
    from revnet.preprocess.fake_data import write_toy_dataset

    other = str(tmp_path / "five")
    write_toy_dataset(other, num_train=10, num_validation=5, num_classes=5)
    with pytest.raises(UserError, match="has 4 classes but the data"):
        train_run(model="resnet-32", id=exp_id, workdir=workdir, data=other)


def test_bad_input_gets_one_line_errors(toy_data, tmp_path):
    for options, message in [
        (dict(model="revnet-999", data=toy_data), "unknown model"),
        (dict(model="revnet-38", data=str(tmp_path)), "has no metadata.json"),
        (dict(model="revnet-38", data=toy_data, gpus=4), "--gpus 4 asks for more GPUs than the 0 visible"),
        (dict(model="revnet-38", data=toy_data, batch_size=7, cpu_replicas=2), "divisible"),
        (dict(model="revnet-38", data=toy_data, mixed_precision="fp8"), "mixed-precision"),
    ]:
        with pytest.raises(UserError, match=message) as error:
            train_run(workdir=str(tmp_path), id="bad", **options)
        assert "\n" not in str(error.value)
