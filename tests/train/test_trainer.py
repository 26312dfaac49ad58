"""The trainer end to end on tiny TFRecords: every CIFAR model, learning, replica equivalence, NaN
handling, experiment folder contents and the one-line errors for bad input."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

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
    scalars = read_scalars(os.path.join(summary["experiment_dir"], "tensorboard", "train"))
    losses = [value for _, value in scalars["loss"]]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    assert np.mean(losses[-5:]) < 0.7  # chance level is ln(4) = 1.39


def _train_steps(num_replicas, images, labels, global_batch):
    """NSTEPS train steps of resnet-32 over the given global batches; returns (losses, variables)."""
    placement = make_placement(gpus=0, cpu_replicas=num_replicas)
    strategy = placement.strategy
    with strategy.scope():
        model = build_model("resnet-32", num_classes=4, seed=3, param_dtype="float64")
        optimizer = MomentumSGD(model.trainable_variables, 0.9, 2e-4, model.decay_variables)
        step = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        position = tf.Variable(0, dtype=tf.int64, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(per_replica)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_steps = make_train_step(model, optimizer, strategy, global_batch, step, position, lambda at_step: 0.1)
    losses = [float(train_steps(iterator, tf.constant(1))[0]) for _ in range(NSTEPS)]
    return losses, [np.asarray(v.read_value()) for v in model.variables]


def test_two_cpu_replicas_match_one_replica_for_the_same_global_batch():
    # Batch norm is per replica, so each global batch is [x; x]: replica 0 and replica 1 then see the
    # same statistics as the single replica does over [x; x]. What remains to compare is exactly loss
    # scaling (global batch size), cross-replica gradient summation and the moving-statistics sync.
    # float64: in float32 this net turns the rounding of batch 4 against batch 8 (other kernel blockings,
    # other reduction orders) into ~1e-3 differences of single betas within two steps, which would hide a
    # small aggregation bug; in float64 the two runs must agree to rounding.
    half = 4
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 255, size=(half, 32, 32, 3)).astype(np.float32) for _ in range(NSTEPS)]
    batch_labels = [rng.integers(0, 4, size=half).astype(np.int32) for _ in range(NSTEPS)]
    images = np.concatenate([np.concatenate([x, x]) for x in batches])
    labels = np.concatenate([np.concatenate([y, y]) for y in batch_labels])
    losses_one, variables_one = _train_steps(1, images, labels, 2 * half)
    losses_two, variables_two = _train_steps(2, images, labels, 2 * half)
    np.testing.assert_allclose(losses_two, losses_one, rtol=1e-6)  # the loss is reported in float32
    assert len(variables_one) == len(variables_two)
    for one, two in zip(variables_one, variables_two, strict=True):
        assert np.linalg.norm(two - one) <= 1e-9 * np.linalg.norm(one) + 1e-12
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
        (dict(model="revnet-38", data=toy_data, compute_dtype="fp8"), "compute dtype"),
            (dict(model="revnet-38", data=toy_data, mixed_precision="bf16"), "unknown training option"),
    ]:
        with pytest.raises(UserError, match=message) as error:
            train_run(workdir=str(tmp_path), id="bad", **options)
        assert "\n" not in str(error.value)


def test_several_steps_per_call_keep_every_boundary_and_the_same_numbers(toy_data, tmp_path):
    options = dict(model="resnet-32", data=toy_data, steps=10, batch_size=8, log_every=3, checkpoint_every=4,
                   eval_every=5, keep_checkpoints=10, seed=3, progress=False)
    one = train_run(id="k1", workdir=str(tmp_path), **options)
    four = train_run(id="k4", workdir=str(tmp_path), steps_per_call=4, **options)
    scalars = {run: read_scalars(os.path.join(tmp_path, run, "tensorboard", "train")) for run in ("k1", "k4")}
    # Calls end where something is due: logs at 3, 6, 9 and the end; evaluations at 5 and 10; checkpoints at 4, 8, 10.
    assert [step for step, _ in scalars["k4"]["loss"]] == [3, 6, 9, 10]
    assert [step for step, _ in scalars["k4"]["validation/top1"]] == [5, 10]
    assert sorted(n for n in os.listdir(os.path.join(tmp_path, "k4", "checkpoints")) if n.endswith(".index")) == \
        ["ckpt-10.index", "ckpt-4.index", "ckpt-8.index"]
    # Same schedule (decays at steps 5 and 8) and data. Later losses drift apart: on random 8-image batches
    # this net turns float rounding (a graph loop sums in another order) into percent differences within
    # a few steps, so exact numerics are checked step by step in the test below.
    np.testing.assert_allclose(scalars["k4"]["loss"][0][1], scalars["k1"]["loss"][0][1], rtol=1e-2)
    np.testing.assert_allclose([v for _, v in scalars["k4"]["learning_rate"]], [0.1, 0.01, 0.001, 0.001], rtol=1e-6)
    assert four["step"] == one["step"] == 10 and four["data_position"] == 80


def test_a_call_of_two_steps_computes_what_two_calls_of_one_step_do():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=16).astype(np.int32)
    initial = [v.numpy() for v in build_model("resnet-32", num_classes=4, seed=3).trainable_variables]
    runs = {}
    for steps_per_call, calls in ((1, [1, 1]), (2, [2])):
        strategy = make_placement(gpus=0, cpu_replicas=1).strategy
        with strategy.scope():
            model = build_model("resnet-32", num_classes=4, seed=3)
            optimizer = MomentumSGD(model.trainable_variables, 0.9, 2e-4, model.decay_variables)
            step = tf.Variable(0, dtype=tf.int64)
            position = tf.Variable(0, dtype=tf.int64)
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda context: tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)))
        # A different rate at every step: a call must read it per step, not once per call.
        train_steps = make_train_step(model, optimizer, strategy, 8, step, position,
                                      lambda at: 0.1 / (1.0 + tf.cast(at, tf.float32)), steps_per_call=steps_per_call)
        loss = [float(train_steps(iterator, tf.constant(count))[0]) for count in calls][-1]
        update = np.concatenate([(v.numpy() - w).ravel()
                                 for v, w in zip(model.trainable_variables, initial, strict=True)])
        runs[steps_per_call] = loss, update, int(step.numpy()), int(position.numpy())
    (loss_one, update_one, *counters_one), (loss_two, update_two, *counters_two) = runs[1], runs[2]
    assert counters_one == counters_two == [2, 16]
    assert loss_two == pytest.approx(loss_one, rel=1e-4)
    # Float rounding moves the two-step update by ~5e-4 of its size; a wrong rate or batch moves it by ~30%.
    assert np.linalg.norm(update_two - update_one) <= 1e-2 * np.linalg.norm(update_one)


@pytest.mark.slow  # XLA compiles the reversible step for about 20 s
def test_jit_compiles_the_reversible_step_with_its_while_loops_and_matches_the_plain_step():
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, size=(2 * 4, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=2 * 4).astype(np.int32)
    results = {}
    for jit in (False, True):
        strategy = make_placement(gpus=0, cpu_replicas=1).strategy
        with strategy.scope():
            # float64: this net turns float32 rounding (XLA picks other kernels) into 1e-3 differences of
            # one step's gradients; in float64 both paths must agree to rounding.
            model = build_model("revnet-38", num_classes=4, seed=3, mode="reversible", param_dtype="float64")
            optimizer = MomentumSGD(model.trainable_variables, 0.9, 2e-4, model.decay_variables)
            step = tf.Variable(0, dtype=tf.int64)
            position = tf.Variable(0, dtype=tf.int64)
        iterator = iter(strategy.distribute_datasets_from_function(
            lambda context: tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)))
        train_steps = make_train_step(model, optimizer, strategy, 4, step, position, lambda at_step: 0.1, jit=jit)
        initial = [v.numpy() for v in model.trainable_variables]
        loss = float(train_steps(iterator, tf.constant(1))[0])
        # The first update is -lr * (gradient + weight decay): it compares the gradients themselves.
        results[jit] = loss, [v.numpy() - w for v, w in zip(model.trainable_variables, initial, strict=True)]
        if jit:
            graph = train_steps.get_concrete_function(iterator, tf.constant(1)).graph.as_graph_def()
            compiled = [f for f in graph.library.function if f.attr["_XlaMustCompile"].b]
            assert compiled, "the forward/backward pass was not marked for XLA"
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-9)
    for plain, compiled in zip(results[False][1], results[True][1], strict=True):
        assert np.linalg.norm(compiled - plain) <= 1e-7 * np.linalg.norm(plain) + 1e-15


def test_jit_warns_only_for_the_reversible_stack():
    from revnet.models import get_config
    from revnet.train.train_config import recipe_for
    from revnet.train.trainer import jit_warning

    base = recipe_for("cifar")
    on = base.replace(jit=True)
    assert "grows with depth" in jit_warning(on, get_config("revnet-38"))
    assert jit_warning(on, get_config("revnet-38", mode="autodiff")) is None
    assert jit_warning(on, get_config("resnet-32")) is None
    assert jit_warning(base.replace(jit=False), get_config("revnet-38")) is None
